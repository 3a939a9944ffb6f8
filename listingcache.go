package overlay

import (
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
)

// listingCache remembers merged directory listings, so that listing a big
// directory again costs one copy of a slice rather than a fresh read of
// its upper copy and a merge. A merged listing depends on the lowers, which
// never change; on the upper's names, whose changes the upper index
// counts; and on the FileInfos of the upper's entries, which writes and
// attribute changes change without changing a name. The overlay counts
// those in changes, after every call that may have made one: each Fs call
// that writes, and a writable handle's Write, WriteAt, Truncate and Close.
// A listing read when both counts stood where they stand now is what a
// fresh read would give.
//
// It is used where the upper keeps an upper index and is not a directory
// on the host, whose FileInfos also carry the access time, which reading a
// file changes with no call to count. Memory: one FileInfo reference
// (16 bytes) per listed entry and the upper entries' frozen FileInfos
// (about 80 bytes each), for the listings read since the last change, and
// at most maxCachedEntries entries.
type listingCache struct {
	// on says whether the cache is used; upper is the upper index whose
	// generations it follows. Both change only under o.mu, with the stack.
	on    atomic.Bool
	upper atomic.Pointer[upperIndex]

	changes atomic.Uint64 // changes of the upper's FileInfos, counted after each

	// names and seen are the counts the remembered listings were read at;
	// when either moves, the listings are forgotten.
	names, seen atomic.Uint64
	size        atomic.Int64 // about how many entries are remembered
	dirs        sync.Map     // resolved directory name → *cachedListing
}

// cachedListing is a remembered listing and the counts it was read at.
type cachedListing struct {
	names, changes uint64
	list           []fs.FileInfo
}

// maxCachedEntries bounds the listing cache, at about 64 MiB of
// references: past it the cache starts over.
const maxCachedEntries = 1 << 22

// follows points the cache at the stack whose upper is up, forgetting every
// listing. The caller holds o.mu for writing.
func (c *listingCache) follows(up layer) {
	c.on.Store(up.names != nil && !up.isHost())
	c.upper.Store(up.names)
	c.forget()
}

// forget empties the cache.
func (c *listingCache) forget() {
	c.dirs.Clear()
	c.size.Store(0)
}

// beginChange and endChange bracket a call that may change the upper:
// callers write defer o.beginChange().endChange(). The upper index counts
// changes of names, but a call may change FileInfos without one (a write,
// a chmod) or besides one (a parent's mtime), so every such call is
// counted here too. endChange counts the change once it is made, so that a
// listing read before it is not taken for current.
func (o *Overlay) beginChange() *Overlay {
	if checkListing != nil {
		changing.Add(1)
	}
	return o
}

// endChange ends the call that beginChange began.
func (o *Overlay) endChange() {
	o.listings.changes.Add(1)
	if checkListing != nil {
		changing.Add(-1)
	}
}

// listing returns the merged listing of the directory e: a copy of the
// remembered one where it is current, otherwise read afresh, and
// remembered. A directory the upper holds no copy of is read afresh: its
// listing is the lowers' one, which the lower index keeps. The caller holds
// o.mu for reading.
func (o *Overlay) listing(e entry) ([]fs.FileInfo, error) {
	c := &o.listings
	if !c.on.Load() || len(e.dirs) == 0 || e.dirs[0] != 0 {
		return o.readMerged(e)
	}
	dir := e.path
	names, changes := c.upper.Load().generation(), c.changes.Load()
	if v, ok := c.dirs.Load(dir); ok {
		if cl := v.(*cachedListing); cl.names == names && cl.changes == changes {
			list := slices.Clone(cl.list)
			if checkListing != nil {
				checkListing(o, e, changes, list)
			}
			return list, nil
		}
	}
	list, err := o.readMerged(e)
	if err != nil {
		return nil, err
	}
	if c.names.Load() != names || c.seen.Load() != changes {
		c.forget()
		c.names.Store(names)
		c.seen.Store(changes)
	}
	if c.size.Add(int64(len(list))) > maxCachedEntries {
		c.forget() // the simplest bound: start over
	}
	c.dirs.Store(dir, &cachedListing{names: names, changes: changes, list: list})
	return slices.Clone(list), nil
}

// checkListing, when set (by the tests), checks every listing the cache
// gives, remembered at count changes, against a fresh read.
var checkListing func(o *Overlay, e entry, changes uint64, list []fs.FileInfo)

// changing counts, while checkListing is set, the calls in progress that
// may change the upper's FileInfos: a listing read while one is under way
// may rightly differ from the remembered one.
var changing atomic.Int64
