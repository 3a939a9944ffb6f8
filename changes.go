package overlay

import (
	"io/fs"
	"slices"
	"strconv"
	"strings"
)

// ChangeKind says how a name differs between the lower layers and the
// merged view.
type ChangeKind int

// The kinds of change, as docker diff reports them.
const (
	// Added: the lowers do not show the name; the merged view does.
	Added ChangeKind = iota + 1
	// Modified: both show the name, but the upper holds its own copy whose
	// content, type or metadata may differ. A directory counts as modified
	// when its metadata changed or a name directly in it was added or
	// deleted.
	Modified
	// Deleted: the lowers show the name; the merged view does not.
	Deleted
)

// String returns "Added", "Modified" or "Deleted".
func (k ChangeKind) String() string {
	switch k {
	case Added:
		return "Added"
	case Modified:
		return "Modified"
	case Deleted:
		return "Deleted"
	}
	return "ChangeKind(" + strconv.Itoa(int(k)) + ")"
}

// letter returns the letter docker diff prints for k.
func (k ChangeKind) letter() string {
	switch k {
	case Added:
		return "A"
	case Modified:
		return "C"
	case Deleted:
		return "D"
	}
	return "?"
}

// Change is one name that the upper layer changes.
type Change struct {
	Path string     // the overlay name, cleaned and unrooted: "etc/motd"
	Kind ChangeKind // how it changed
}

// String returns the change as docker diff prints it: "A /etc/motd",
// "C /etc", "D /tmp/x".
func (c Change) String() string {
	if c.Path == "." {
		return c.Kind.letter() + " /"
	}
	return c.Kind.letter() + " /" + c.Path
}

// Changes reports what the upper layer changes against the lower layers, as
// docker diff does: every name the upper adds, modifies or deletes, sorted
// by path. A file the upper holds that the lowers also show is Modified,
// even when only its metadata changed (a copy-up is made only to change
// something). A directory the upper holds only because a file in it was
// copied up is not reported. A deleted directory is reported alone, not
// its contents; an opaque directory reports each lower name it hides as
// Deleted. The root is never reported. A read-only overlay has no changes.
// A kernel-format upper's redirected directory counts as copied up whole
// and opaque, as ExportLayer writes it: it and what it shows are Added
// where the lowers show nothing at its name, Modified where they do, and
// the lower names it hides are Deleted; its old name, whited out, is
// Deleted.
//
// Changes holds the overlay's read lock while it walks the upper, so it
// sees one state of the namespace.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) Changes() ([]Change, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.readOnly() {
		return nil, nil
	}
	changes, err := o.changes()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(changes, func(a, b Change) int { return strings.Compare(a.Path, b.Path) })
	return changes, nil
}

// changes is Changes's worker. The caller holds o.mu for reading.
func (o *Overlay) changes() ([]Change, error) {
	lower, err := o.lowerOnly(".")
	if err != nil {
		return nil, pathErr("changes", ".", err)
	}
	w := changeWalker{o: o}
	_, err = w.dir(".", lower, false, false)
	return w.out, err
}

// changeWalker collects the changes of one Changes call. The caller holds
// o.mu for reading.
type changeWalker struct {
	o   *Overlay
	out []Change
}

// add records a change.
func (w *changeWalker) add(p string, k ChangeKind) {
	w.out = append(w.out, Change{Path: p, Kind: k})
}

// upperListing is what one upper directory holds, sorted out.
type upperListing struct {
	names     []fs.FileInfo   // the entries, markers left out
	present   map[string]bool // their names
	whiteouts []string        // the names its whiteouts hide
	opaque    bool
}

// readUpperDir lists the upper directory p. Below a directory that a
// redirect (kernel format) moved, whole is set or becomes set: there the
// listing is the merged one and counts as opaque, as if the directory had
// been copied up whole, which is what the OCI format does to rename it.
func (w *changeWalker) readUpperDir(p string, whole bool) (upperListing, bool, error) {
	whole, err := w.o.movedWhole(p, whole)
	if err != nil {
		return upperListing{}, false, pathErr("changes", p, err)
	}
	var list []fs.FileInfo
	if whole {
		list, err = w.o.mergedListing(p)
	} else {
		list, err = w.o.layers[0].readDir(p)
	}
	if err != nil {
		return upperListing{}, false, pathErr("changes", p, err)
	}
	d := upperListing{present: make(map[string]bool, len(list)), opaque: whole}
	for _, fi := range list {
		name := fi.Name()
		h, wh := hiddenName(name)
		switch {
		case name == opaqueMarker:
			d.opaque = true
		case wh:
			d.whiteouts = append(d.whiteouts, h)
		case !isReserved(name):
			d.names = append(d.names, fi)
			d.present[name] = true
		}
	}
	return d, whole, nil
}

// dir reports the changes in the upper directory p. lower is the directory
// the lowers alone show at p, if found; cut says an ancestor is opaque, so
// that the lowers do not merge into p in the merged view, and whole that an
// ancestor was moved by a redirect. It returns whether a name directly in p
// was added or deleted.
func (w *changeWalker) dir(p string, lower lowerEntry, cut, whole bool) (bool, error) {
	d, whole, err := w.readUpperDir(p, whole)
	if err != nil {
		return false, err
	}
	d.opaque = d.opaque || cut
	listed := false
	for _, fi := range d.names {
		added, err := w.child(join(p, fi.Name()), fi, lower, d.opaque, whole)
		if err != nil {
			return false, err
		}
		listed = listed || added
	}
	if !lower.found {
		return listed, nil
	}
	deleted, err := w.deletions(p, d, lower)
	if err != nil {
		return false, pathErr("changes", p, err)
	}
	return listed || deleted, nil
}

// child reports the changes at the upper name q, described by fi, and
// beneath it; cut says the lowers do not merge into q. It returns whether
// q was added.
func (w *changeWalker) child(q string, fi fs.FileInfo, lower lowerEntry, cut, whole bool) (bool, error) {
	var le lowerEntry
	if lower.found {
		var err error
		if le, err = w.o.lowerOnly(q); err != nil {
			return false, pathErr("changes", q, err)
		}
	}
	switch {
	case !le.found:
		w.add(q, Added)
	case fi.IsDir() && le.isDir():
		listed, err := w.dir(q, le, cut, whole)
		if listed || metaDiffers(fi, le.info) {
			w.add(q, Modified)
		}
		return false, err
	default:
		w.add(q, Modified)
	}
	if fi.IsDir() {
		_, err := w.dir(q, lowerEntry{}, cut, whole)
		return !le.found, err
	}
	return !le.found, nil
}

// deletions reports the lower names that the upper directory d, at p,
// deletes: those its whiteouts hide and, if it is opaque or beneath an
// opaque directory, every other lower name it does not hold itself. It returns whether there was any.
func (w *changeWalker) deletions(p string, d upperListing, lower lowerEntry) (bool, error) {
	deleted := make(map[string]bool)
	for _, h := range d.whiteouts {
		if d.present[h] || deleted[h] {
			continue
		}
		le, err := w.o.lowerOnly(join(p, h))
		if err != nil {
			return false, err
		}
		if le.found {
			deleted[h] = true
			w.add(join(p, h), Deleted)
		}
	}
	if d.opaque {
		list, err := w.o.lowerListing(lower)
		if err != nil {
			return false, err
		}
		for _, fi := range list {
			if n := fi.Name(); !d.present[n] && !deleted[n] {
				deleted[n] = true
				w.add(join(p, n), Deleted)
			}
		}
	}
	return len(deleted) > 0, nil
}

// metaDiffers reports whether two copies of a directory differ in mode,
// modification time or, where both report one, owner.
func metaDiffers(a, b fs.FileInfo) bool {
	if a.Mode() != b.Mode() || !a.ModTime().Equal(b.ModTime()) {
		return true
	}
	au, ag, aok := ownerOf(a)
	bu, bg, bok := ownerOf(b)
	return aok && bok && (au != bu || ag != bg)
}
