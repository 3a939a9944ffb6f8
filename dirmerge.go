package overlay

import (
	"cmp"
	"io/fs"
	"slices"
	"strings"
	"time"
)

// mergeDir merges the listings of one directory's copies, given top-down,
// into the merged view, sorted by name. The topmost copy of a name wins. A
// whiteout hides its name in the listings below its own; reserved names
// (markers and the work directory) are never shown.
//
// It is a k-way merge: each listing is sorted once, then a heap of cursors,
// one per listing, yields every entry in name order, the topmost copy of a
// name first. That is one pass over the entries at about log(k) name
// comparisons each; merging the listings one below the other instead
// carried the growing merged listing through every step.
func mergeDir(listings [][]fs.FileInfo) []fs.FileInfo {
	switch len(listings) {
	case 0:
		return nil
	case 1:
		return visibleSorted(listings[0])
	}
	h, total := cursorsOver(listings)
	return h.merge(whiteoutsIn(listings), total)
}

// cursorsOver returns a heap of cursors at the start of each listing's
// visible names, sorted, and how many entries they hold in all.
func cursorsOver(listings [][]fs.FileInfo) (cursors, int) {
	h, total := make(cursors, 0, len(listings)), 0
	for k, list := range listings {
		if vis := visibleSorted(list); len(vis) > 0 {
			h = append(h, cursor{vis, vis[0].Name(), k})
			total += len(vis)
		}
	}
	h.init()
	return h, total
}

// merge takes every entry off the heap h in name order, which holds total
// of them, keeping each name's topmost copy unless a whiteout in hidden
// hides it there.
func (h cursors) merge(hidden []whiteout, total int) []fs.FileInfo {
	merged := make([]fs.FileInfo, 0, total)
	for len(h) > 0 {
		top := h[0]
		for len(h) > 0 && h[0].name == top.name {
			h = h.advance() // the same name lower down: shadowed
		}
		for len(hidden) > 0 && hidden[0].name < top.name {
			hidden = hidden[1:]
		}
		if len(hidden) > 0 && hidden[0].name == top.name && hidden[0].level < top.level {
			continue // whited out above its topmost copy
		}
		merged = append(merged, top.list[0])
	}
	if cap(merged)-len(merged) > len(merged)/4 {
		merged = slices.Clip(slices.Clone(merged)) // the listing is kept: drop what shadowing left unused
	}
	return merged
}

// whiteout is a name that a whiteout in the listing at level hides from the
// listings below it.
type whiteout struct {
	name  string
	level int
}

// whiteoutsIn returns the names that the whiteouts in listings hide, sorted
// by name and, for a name whited out more than once, topmost first.
func whiteoutsIn(listings [][]fs.FileInfo) []whiteout {
	var hidden []whiteout
	for k, list := range listings[:len(listings)-1] { // the bottom one hides nothing
		for _, fi := range list {
			if h, ok := hiddenName(fi.Name()); ok {
				hidden = append(hidden, whiteout{h, k})
			}
		}
	}
	slices.SortFunc(hidden, func(a, b whiteout) int {
		return cmp.Or(strings.Compare(a.name, b.name), cmp.Compare(a.level, b.level))
	})
	return hidden
}

// cursor is where mergeDir is in one listing.
type cursor struct {
	list  []fs.FileInfo // what is left of the listing, sorted by name
	name  string        // list[0]'s name, read once
	level int           // the listing's place, top-down
}

// cursors is a min-heap of cursors ordered by name, then by level, so that
// of the copies of a name the topmost surfaces first.
type cursors []cursor

// init orders h as a heap.
func (h cursors) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

// advance moves the topmost cursor past its entry, dropping it when its
// listing is done, and returns the heap.
func (h cursors) advance() cursors {
	c := &h[0]
	c.list = c.list[1:]
	if len(c.list) == 0 {
		h[0] = h[len(h)-1]
		h = h[:len(h)-1]
	} else {
		c.name = c.list[0].Name()
	}
	if len(h) > 0 {
		h.down(0)
	}
	return h
}

// down sifts the cursor at i down to its place.
func (h cursors) down(i int) {
	for {
		least := i
		for _, j := range [2]int{2*i + 1, 2*i + 2} {
			if j < len(h) && h.less(j, least) {
				least = j
			}
		}
		if least == i {
			return
		}
		h[i], h[least] = h[least], h[i]
		i = least
	}
}

// less orders cursors by name, then by level.
func (h cursors) less(i, j int) bool {
	if c := strings.Compare(h[i].name, h[j].name); c != 0 {
		return c < 0
	}
	return h[i].level < h[j].level
}

// visibleSorted is mergeDir of a single listing, which holds each name
// once: its names but the reserved ones, sorted (a MemMapFs listing already
// is).
func visibleSorted(list []fs.FileInfo) []fs.FileInfo {
	out := make([]fs.FileInfo, 0, len(list))
	for _, fi := range list {
		if !isReserved(fi.Name()) {
			out = append(out, fi)
		}
	}
	if !slices.IsSortedFunc(out, byName) {
		slices.SortFunc(out, byName)
	}
	return out
}

// readMerged lists the merged directory e: the upper's listing, if the
// upper holds a copy, over the lowers' merged listing from the index. Only
// the upper's listing is sorted here; the lowers' was sorted once.
func (o *Overlay) readMerged(e entry) ([]fs.FileInfo, error) {
	var upper []fs.FileInfo
	var hidden []string // what the upper's whiteouts hide
	lowers := e.dirs
	if lowers[0] == 0 {
		list, err := o.layers[0].readDir(e.path)
		if err != nil {
			return nil, err
		}
		freezeAll(list)
		upper, lowers = mergeDir([][]fs.FileInfo{list}), lowers[1:]
		if len(lowers) > 0 {
			hidden = hiddenBy(list)
		}
	}
	if len(lowers) == 0 {
		return upper, nil
	}
	below, err := o.lowerListingAt(e.lowerPath())
	if err != nil {
		return nil, err
	}
	return mergeSorted(upper, below, hidden), nil
}

// hiddenBy returns the names that the whiteouts in list hide, sorted, for
// mergeSorted.
func hiddenBy(list []fs.FileInfo) []string {
	var hidden []string
	for _, fi := range list {
		if h, ok := hiddenName(fi.Name()); ok {
			hidden = append(hidden, h)
		}
	}
	slices.Sort(hidden)
	return hidden
}

// mergeSorted merges two listings sorted by name, upper winning, leaving out
// the lower names in hidden (also sorted). The upper usually holds few of a
// big directory's names, so the lower entries between two of the upper's or
// hidden names are found by a galloping search and copied as one run: a
// merge costs one copy of the lower listing and, for u upper and hidden
// names over l lower ones, about u·log(l/u) name comparisons, rather than a
// comparison per lower entry, each a trip through memory that grows slower
// per entry as the directory outgrows the caches.
func mergeSorted(upper, lower []fs.FileInfo, hidden []string) []fs.FileInfo {
	merged := make([]fs.FileInfo, 0, len(upper)+len(lower))
	for len(lower) > 0 && (len(upper) > 0 || len(hidden) > 0) {
		name, fromUpper := nextCut(upper, hidden)
		j := gallop(lower, name)
		merged = append(merged, lower[:j]...)
		lower = lower[j:]
		if len(lower) > 0 && lower[0].Name() == name {
			lower = lower[1:] // shadowed or hidden
		}
		if fromUpper {
			merged = append(merged, upper[0])
			upper = upper[1:]
		}
		for len(hidden) > 0 && hidden[0] <= name {
			hidden = hidden[1:]
		}
	}
	merged = append(merged, lower...)
	return append(merged, upper...)
}

// nextCut returns the smaller of the first names of upper and hidden, at
// least one of which is not empty, and whether it is upper's: a name both
// hold is upper's, which shows it.
func nextCut(upper []fs.FileInfo, hidden []string) (name string, fromUpper bool) {
	switch {
	case len(hidden) == 0:
		return upper[0].Name(), true
	case len(upper) == 0:
		return hidden[0], false
	}
	u, h := upper[0].Name(), hidden[0]
	if u <= h {
		return u, true
	}
	return h, false
}

// gallop returns the index of the first entry of the sorted list whose
// name is not below name (len(list) if none): it doubles its step until it
// passes name, then searches the last step's range, so that finding an
// index j costs about 2·log(j) comparisons.
func gallop(list []fs.FileInfo, name string) int {
	end := 1
	for end <= len(list) && list[end-1].Name() < name {
		end *= 2
	}
	lo, hi := end/2, min(end, len(list))
	j, _ := slices.BinarySearchFunc(list[lo:hi], name, nameCmp)
	return lo + j
}

// nameCmp compares a FileInfo's name with name, for binary searches.
func nameCmp(fi fs.FileInfo, name string) int {
	return strings.Compare(fi.Name(), name)
}

// byName orders FileInfos by name.
func byName(a, b fs.FileInfo) int {
	return strings.Compare(a.Name(), b.Name())
}

// frozenInfo is a FileInfo whose fields were read once. MemMapFs hands out
// live FileInfos whose name and times change when the file is renamed or
// written later; a listing must not change after it was taken.
type frozenInfo struct {
	name    string
	size    int64
	mode    fs.FileMode
	modTime time.Time
	sys     any
}

// frozenOf reads fi's fields once.
func frozenOf(fi fs.FileInfo) frozenInfo {
	return frozenInfo{fi.Name(), fi.Size(), fi.Mode(), fi.ModTime(), fi.Sys()}
}

// freezeAll freezes every FileInfo of list in place, all in one block of
// memory: a listing of many entries makes one allocation, not one each.
func freezeAll(list []fs.FileInfo) {
	block := make([]frozenInfo, len(list))
	for i, fi := range list {
		block[i] = frozenOf(fi)
		list[i] = &block[i]
	}
}

func (fi frozenInfo) Name() string       { return fi.name }
func (fi frozenInfo) Size() int64        { return fi.size }
func (fi frozenInfo) Mode() fs.FileMode  { return fi.mode }
func (fi frozenInfo) ModTime() time.Time { return fi.modTime }
func (fi frozenInfo) IsDir() bool        { return fi.mode.IsDir() }
func (fi frozenInfo) Sys() any           { return fi.sys }
