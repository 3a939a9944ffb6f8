package overlay

import (
	"io/fs"
	"slices"
	"strings"
	"sync"
)

// lowerIndex remembers what the lower layers alone show at each resolved
// name looked up so far, and each merged lower directory listed so far.
// Lowers never change while in use, so nothing here is ever invalidated,
// and a lookup costs the same whatever the number of lowers. Memory grows
// with what is looked up: about 150 bytes per name (the entry, its path and
// the layer's FileInfo) and one FileInfo reference per listed entry. Racing
// lookups of one name compute the same entry; the last store wins.
type lowerIndex struct {
	entries  sync.Map // resolved name → lowerEntry
	listings sync.Map // resolved directory name → []fs.FileInfo, merged and sorted
}

// lowerEntry is what the lowers alone show at a name: the topmost copy and,
// for a directory, the lowers whose copies merge.
type lowerEntry struct {
	found bool
	entry

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
}

// lowerOnly returns what the lowers alone show at the resolved name p,
// ignoring the upper. The caller has checked that p's parent is a
// directory whose merge includes the lowers.
func (o *Overlay) lowerOnly(p string) (lowerEntry, error) {
	if v, ok := o.lowers.entries.Load(p); ok {
		return v.(lowerEntry), nil
	}
	var parent lowerEntry
	if p == "." {
		parent = lowerEntry{found: true, entry: entry{path: ".", dirs: o.rootDirs}}
		if len(o.rootDirs) > 0 && o.rootDirs[0] == 0 {
			parent.dirs = o.rootDirs[1:]
		}
		return o.remember(p, o.lowerRootEntry(parent))
	}
	parent, err := o.lowerOnly(parentOf(p))
	if err != nil || !parent.found || !parent.isDir() || len(parent.dirs) == 0 {
		return lowerEntry{}, err
	}
	if len(parent.dirs) > probeLimit {
		absent, err := o.absentFromListing(parent.entry, baseOf(p))
		if err != nil || absent {
			return lowerEntry{}, err // not remembered: the listing answers again cheaply
		}
	}
	e, found, err := o.child(parent.entry, baseOf(p), parent.dirs)
	if err != nil {
		return lowerEntry{}, err
	}
	return o.remember(p, lowerEntry{found: found, entry: e})
}

// lowerRootEntry fills in the root's FileInfo from the topmost lower root.
func (o *Overlay) lowerRootEntry(root lowerEntry) lowerEntry {
	if len(root.dirs) == 0 {
		return lowerEntry{}
	}
	info, err := o.layers[root.dirs[0]].lstat(".")
	if err != nil {
		return lowerEntry{}
	}
	root.layer, root.info = root.dirs[0], info
	return root
}

// remember stores e as what the lowers show at p. The FileInfo is frozen:
// the lower never changes, and a MemMapFs FileInfo would take a lock on
// every call, which racing lookups would contend for.
func (o *Overlay) remember(p string, e lowerEntry) (lowerEntry, error) {
	if e.info != nil {
		e.info = freeze(e.info)
	}
	if e.found && e.isDir() {
		e.underUpper = slices.Clip(append([]int{0}, e.dirs...))
	}
	o.lowers.entries.Store(p, e)
	return e, nil
}

// lowerListing returns the merged, sorted listing of the lower copies of
// the directory e (a lowerOnly entry), whiteouts applied.
func (o *Overlay) lowerListing(e entry) ([]fs.FileInfo, error) {
	if v, ok := o.lowers.listings.Load(e.path); ok {
		return v.([]fs.FileInfo), nil
	}
	listings := make([][]fs.FileInfo, 0, len(e.dirs))
	for _, i := range e.dirs {
		list, err := o.layers[i].readDir(e.path)
		if err != nil {
			return nil, err
		}
		for j, fi := range list {
			list[j] = freeze(fi) // for the same reason as in remember
		}
		listings = append(listings, list)
	}
	merged := mergeDir(listings)
	o.lowers.listings.Store(e.path, merged)
	return merged, nil
}

// probeLimit is how many lowers a directory may merge before a name that is
// absent from all of them is found absent through the directory's merged
// listing (read once, then searched) instead of by asking every lower: new
// names, such as files being created, would otherwise cost two calls per
// lower each.
const probeLimit = 2

// absentFromListing reports whether the merged lower directory dir lists no
// entry base.
func (o *Overlay) absentFromListing(dir entry, base string) (bool, error) {
	list, err := o.lowerListing(dir)
	if err != nil {
		return false, err
	}
	_, found := slices.BinarySearchFunc(list, base, func(fi fs.FileInfo, name string) int {
		return strings.Compare(fi.Name(), name)
	})
	return !found, nil
}
