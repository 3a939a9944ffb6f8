package overlay

import (
	"sync"
	"sync/atomic"
)

// lookupCache remembers what walks of clean names found, while the upper's
// names stay as they are. A name's resolution depends only on the names in
// the upper, which the upper index counts the changes of, and on the
// lowers, which never change: so a walk's outcome holds until the next
// change, and the cache empties itself (in one step) when it sees one.
// What a walk found in the upper is remembered by where it is, not by its
// FileInfo, which is read again on every hit since writes change it.
//
// The overlay uses it where the upper changes through the upper index only:
// an OCI upper, or none. Memory: about 250 bytes per distinct name looked
// up since the last change.
type lookupCache struct {
	gen    atomic.Uint64 // the upper index's generation the entries are of
	follow sync.Map      // clean name → *cachedWalk, final symlink followed
	lstat  sync.Map      // clean name → *cachedWalk
}

// cachedWalk is a remembered walk's outcome.
type cachedWalk struct {
	entry
	found bool
}

// cacheable reports whether lookups can be remembered: the upper, if any,
// keeps an upper index.
func (o *Overlay) cacheable() bool {
	up := o.layers[0]
	return up.fs == nil || up.names != nil
}

// resolve walks the clean name, as walk does, answering from the lookup
// cache when it can. It returns the entry and whether it was found; the
// entry's FileInfo is real, as endOfWalk gives it. It takes o.mu for
// reading.
func (o *Overlay) resolve(name string, follow bool) (entry, bool, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if !o.cacheable() {
		r, err := o.walk(name, follow)
		return r.entry, r.found, err
	}
	c := &o.lookups
	m := c.of(follow)
	gen := o.layers[0].names.generation()
	if c.gen.Load() == gen {
		if v, ok := m.Load(name); ok {
			return o.hit(name, follow, v.(*cachedWalk))
		}
	} else {
		m.Clear()
		c.of(!follow).Clear()
		c.gen.Store(gen)
	}
	r, err := o.walk(name, follow)
	if err != nil {
		return entry{}, false, err
	}
	cw := &cachedWalk{entry: r.entry, found: r.found}
	if cw.inUpper() && cw.found {
		cw.info = typeOnlyOf(cw.info)
	}
	m.Store(name, cw)
	return r.entry, r.found, nil
}

// hit returns the remembered walk of name, reading the FileInfo of an
// upper entry afresh.
func (o *Overlay) hit(name string, follow bool, cw *cachedWalk) (entry, bool, error) {
	e := cw.entry
	if cw.found && cw.inUpper() {
		info, err := o.infoOf(e)
		if err != nil {
			return entry{}, false, err
		}
		e.info = info
	}
	if checkCached != nil {
		checkCached(o, name, follow, e, cw.found)
	}
	return e, cw.found, nil
}

// checkCached, when set (by the tests), checks every answer of the lookup
// cache against a fresh walk.
var checkCached func(o *Overlay, name string, follow bool, e entry, found bool)

// of returns the map of walks that follow a final symlink, or of those
// that do not.
func (c *lookupCache) of(follow bool) *sync.Map {
	if follow {
		return &c.follow
	}
	return &c.lstat
}

// clear forgets every walk, for when the stack of layers changes.
func (c *lookupCache) clear() {
	c.follow.Clear()
	c.lstat.Clear()
}
