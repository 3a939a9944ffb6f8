package overlay

import (
	"io/fs"
	"slices"
	"strings"
)

// mergeDir merges the listings of one directory's copies, given top-down,
// into the merged view, sorted by name. The topmost copy of a name wins. A
// whiteout hides its name in the listings below its own; reserved names
// (markers and the work directory) are never shown.
func mergeDir(listings [][]fs.FileInfo) []fs.FileInfo {
	decided := make(map[string]bool)
	var merged []fs.FileInfo
	for _, list := range listings {
		var hidden []string
		for _, fi := range list {
			name := fi.Name()
			if isReserved(name) {
				if h, ok := hiddenName(name); ok {
					hidden = append(hidden, h)
				}
				continue
			}
			if !decided[name] {
				decided[name] = true
				merged = append(merged, fi)
			}
		}
		for _, h := range hidden {
			decided[h] = true
		}
	}
	slices.SortFunc(merged, func(a, b fs.FileInfo) int {
		return strings.Compare(a.Name(), b.Name())
	})
	return merged
}

// readMerged lists the merged directory e.
func (o *Overlay) readMerged(e entry) ([]fs.FileInfo, error) {
	listings := make([][]fs.FileInfo, 0, len(e.dirs))
	for _, i := range e.dirs {
		list, err := o.layers[i].readDir(e.path)
		if err != nil {
			return nil, err
		}
		listings = append(listings, list)
	}
	return mergeDir(listings), nil
}
