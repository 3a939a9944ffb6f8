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
// up since the last change, and at most maxCachedWalks walks.
type lookupCache struct {
	// upper is the upper index whose generations the cache follows, nil
	// for a read-only overlay; on says whether the cache is used at all.
	// Both change only under o.mu, with the stack of layers.
	upper atomic.Pointer[upperIndex]
	on    atomic.Bool

	gen    atomic.Uint64 // the upper index's generation the entries are of
	size   atomic.Int64  // about how many walks are remembered
	follow sync.Map      // clean name → *cachedWalk, final symlink followed
	lstat  sync.Map      // clean name → *cachedWalk
}

// maxCachedWalks bounds the lookup cache, at about 16 MB: past it the cache
// starts over. The lower index, which the walks come from, stays.
const maxCachedWalks = 1 << 16

// cachedWalk is a remembered walk's outcome.
type cachedWalk struct {
	entry
	found bool
}

// follows points the cache at the stack whose upper is up, forgetting
// every walk. Lookups can be remembered where the upper, if any, keeps an
// upper index. The caller holds o.mu for writing.
func (c *lookupCache) follows(up layer) {
	c.on.Store(up.fs == nil || up.names != nil)
	c.upper.Store(up.names)
	c.clear()
}

// frozen answers a walk of the clean name from the cache without taking
// any lock, where the answer needs nothing from the layers: a name found
// absent, or found in a lower (whose FileInfo never changes). ok is false
// where the cache cannot answer so. An answer of the generation current
// when frozen began is right at that moment; a change racing it is
// linearised after it, as it would be had frozen taken o.mu first.
func (o *Overlay) frozen(name string, follow bool) (e entry, found, ok bool) {
	c := &o.lookups
	if !c.on.Load() {
		return entry{}, false, false
	}
	upper := c.upper.Load()
	gen := upper.generation()
	if c.gen.Load() != gen {
		return entry{}, false, false
	}
	v, hit := c.of(follow).Load(name)
	if !hit {
		return entry{}, false, false
	}
	cw := v.(*cachedWalk)
	if cw.found && cw.inUpper() {
		return entry{}, false, false
	}
	if checkFrozen != nil {
		checkFrozen(o, name, follow, upper, gen, cw.entry, cw.found)
	}
	return cw.entry, cw.found, true
}

// resolve walks the clean name, as walk does, answering from the lookup
// cache when it can. It returns the entry and whether it was found; the
// entry's FileInfo is real, as endOfWalk gives it, unless withInfo is false
// and the cache answered for an upper entry: then it is the typeOnly
// stand-in of its type (see infoOf), which spares reading the layer. It
// takes o.mu for reading.
func (o *Overlay) resolve(name string, follow, withInfo bool) (entry, bool, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	c := &o.lookups
	if !c.on.Load() {
		r, err := o.walk(name, follow)
		return r.entry, r.found, err
	}
	m := c.of(follow)
	gen := c.upper.Load().generation()
	if c.gen.Load() == gen {
		if v, ok := m.Load(name); ok {
			return o.hit(name, follow, withInfo, v.(*cachedWalk))
		}
	} else {
		c.clear()
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
	if c.size.Add(1) > maxCachedWalks {
		c.clear() // the simplest bound: start over
	}
	m.Store(name, cw)
	return r.entry, r.found, nil
}

// lookupQuickly is resolve, answering without a lock where the cache has
// a frozen answer. A caller that uses the entry's layer holds o.use, so
// that the layer number stays that of the same layer (Commit renumbers
// them); statName uses only the FileInfo. Open, which needs only the type,
// passes withInfo false.
func (o *Overlay) lookupQuickly(name string, follow, withInfo bool) (entry, bool, error) {
	if e, found, ok := o.frozen(name, follow); ok {
		return e, found, nil
	}
	return o.resolve(name, follow, withInfo)
}

// hit returns the remembered walk of name, reading the FileInfo of an
// upper entry afresh if withInfo is set.
func (o *Overlay) hit(name string, follow, withInfo bool, cw *cachedWalk) (entry, bool, error) {
	e := cw.entry
	if withInfo && cw.found && cw.inUpper() {
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

// checkFrozen, when set (by the tests), checks every lock-free answer
// of the lookup cache, made at generation gen of upper, against a fresh
// walk.
var checkFrozen func(o *Overlay, name string, follow bool, upper *upperIndex, gen uint64, e entry, found bool)

// of returns the map of walks that follow a final symlink, or of those
// that do not.
func (c *lookupCache) of(follow bool) *sync.Map {
	if follow {
		return &c.follow
	}
	return &c.lstat
}

// clear forgets every walk.
func (c *lookupCache) clear() {
	c.size.Store(0)
	c.follow.Clear()
	c.lstat.Clear()
}
