package overlay

import (
	"io/fs"
	"slices"
	"sync"
)

// lowerIndex remembers what the lower layers alone show at each resolved
// name looked up so far, and each merged lower directory listed so far.
// Lowers never change while in use, so nothing here is ever invalidated,
// and a lookup costs the same whatever the number of lowers. Memory grows
// with what is looked up: about 400 bytes per name (the entry, its path, the
// layer's FileInfo frozen, and the map's own share) and about 90 per entry
// of a listed directory (its FileInfo frozen, and a reference to it); see
// TestCacheMemoryPerName. Racing lookups of one name compute the same
// entry; the last store wins.
type lowerIndex struct {
	entries  sync.Map // resolved name → lowerEntry
	listings sync.Map // resolved directory name → []fs.FileInfo, merged and sorted
}

// lowerEntry is what the lowers alone show at a name: the topmost copy and,
// for a directory, the lowers whose copies merge.
type lowerEntry struct {
	found bool
	entry

	// paths is, for a directory reached through a redirect in a lower
	// layer, the name of each copy in its layer, parallel to dirs; nil
	// when every copy is at path, the common case.
	paths []string

	// underUpper is, for a directory, dirs with the upper in front: the
	// dirs of a merged directory whose upper copy is not opaque. It is
	// built once, so that lookups through such directories allocate
	// nothing.
	underUpper []int
}

// resetLowerIndex forgets everything the index remembers, for when the
// stack of lowers changes (Commit, Reset). The caller holds o.mu for writing.
func (o *Overlay) resetLowerIndex() {
	o.lowers.entries.Clear()
	o.lowers.listings.Clear()
	o.lookups.follows(o.layers[0])
	o.listings.follows(o.layers[0])
}

// lowerOnly returns what the lowers alone show at the resolved name p,
// ignoring the upper. The caller has checked that p's parent is a
// directory whose merge includes the lowers.
func (o *Overlay) lowerOnly(p string) (lowerEntry, error) {
	if v, ok := o.lowers.entries.Load(p); ok {
		return v.(lowerEntry), nil
	}
	if p == "." {
		root, err := o.lowerRootEntry()
		if err != nil {
			return lowerEntry{}, err
		}
		return o.remember(p, root)
	}
	parent, err := o.lowerOnly(parentOf(p))
	if err != nil || !parent.found || !parent.isDir() || len(parent.dirs) == 0 {
		return lowerEntry{}, err
	}
	if len(parent.dirs) > probeLimit {
		absent, err := o.absentFromListing(parent, baseOf(p))
		if err != nil || absent {
			return lowerEntry{}, err // not remembered: the listing answers again cheaply
		}
	}
	e, err := o.child(parent, baseOf(p))
	if err != nil {
		return lowerEntry{}, err
	}
	return o.remember(p, e)
}

// lowerRootEntry returns the root of the lowers alone: the lowers whose
// roots merge, down to the first opaque one, whatever the upper's root is,
// and the topmost one's FileInfo.
func (o *Overlay) lowerRootEntry() (lowerEntry, error) {
	var dirs []int
	for i := 1; i < len(o.layers); i++ {
		dirs = append(dirs, i)
		if opaque, err := o.layers[i].isOpaque("."); err != nil || opaque {
			if err != nil {
				return lowerEntry{}, err
			}
			break
		}
	}
	if len(dirs) == 0 {
		return lowerEntry{}, nil
	}
	info, err := o.layers[dirs[0]].lstat(".")
	if err != nil {
		return lowerEntry{}, err
	}
	return lowerEntry{found: true, entry: entry{path: ".", layer: dirs[0], info: info, dirs: dirs}}, nil
}

// remember stores e as what the lowers show at p. The FileInfo is frozen:
// the lower never changes, and a MemMapFs FileInfo would take a lock on
// every call, which racing lookups would contend for.
func (o *Overlay) remember(p string, e lowerEntry) (lowerEntry, error) {
	if e.info != nil {
		e.info = o.layers[e.layer].freeze(e.info)
	}
	if e.found && e.isDir() {
		e.underUpper = slices.Clip(append([]int{0}, e.dirs...))
	}
	o.lowers.entries.Store(p, e)
	return e, nil
}

// lowerListing returns the merged, sorted listing of the lower copies of
// the directory e (a lowerOnly entry), each read at its name in its layer,
// whiteouts applied.
func (o *Overlay) lowerListing(e lowerEntry) ([]fs.FileInfo, error) {
	if v, ok := o.lowers.listings.Load(e.path); ok {
		return v.([]fs.FileInfo), nil
	}
	listings := make([][]fs.FileInfo, 0, len(e.dirs))
	for k, i := range e.dirs {
		list, err := o.layers[i].readDir(e.pathIn(k))
		if err != nil {
			return nil, err
		}
		freezeAll(list) // for the same reason as in remember
		listings = append(listings, list)
	}
	merged := mergeDir(listings)
	o.lowers.listings.Store(e.path, merged)
	return merged, nil
}

// lowerListingAt returns lowerListing of what the lowers alone show at the
// name lp, a directory.
func (o *Overlay) lowerListingAt(lp string) ([]fs.FileInfo, error) {
	if v, ok := o.lowers.listings.Load(lp); ok {
		return v.([]fs.FileInfo), nil
	}
	le, err := o.lowerOnly(lp)
	if err != nil || !le.found || !le.isDir() {
		return nil, err
	}
	return o.lowerListing(le)
}

// probeLimit is how many lowers a directory may merge before a name that is
// absent from all of them is found absent through the directory's merged
// listing (read once, then searched) instead of by asking every lower: new
// names, such as files being created, would otherwise cost two calls per
// lower each.
const probeLimit = 2

// absentFromListing reports whether the merged lower directory dir lists no
// entry base.
func (o *Overlay) absentFromListing(dir lowerEntry, base string) (bool, error) {
	list, err := o.lowerListing(dir)
	if err != nil {
		return false, err
	}
	_, found := slices.BinarySearchFunc(list, base, nameCmp)
	return !found, nil
}

// isDirEntry reports whether the lowers show a directory.
func (e lowerEntry) isDirEntry() bool { return e.found && e.isDir() }
