package overlay

import (
	"io/fs"
	"path"
	"strings"
	"syscall"
	"time"
)

// entry is what a name resolves to in the merged view.
type entry struct {
	path  string      // the resolved name, symlinks followed: "." or "a/b"
	layer int         // the layer holding the topmost copy; 0 is the upper
	info  fs.FileInfo // that copy, as Lstat describes it
	dirs  []int       // for a directory: the layers whose copies merge, top-down

	// lpath is the name at which the lowers are looked up for this entry
	// when a redirected directory (kernel format) is at or above it, and ""
	// when that is path itself.
	lpath string

	// lsrc is the name of the topmost copy in its layer, a lower, when it
	// differs from lowerPath(): when a redirect in a lower layer led to it.
	lsrc string

	// whiteout is set on the entry of a name found absent because the upper
	// whites it out, so that creating the name drops that whiteout. Without
	// a lower copy there is never a whiteout to drop.
	whiteout bool

	// names is the upper index's listing of a directory in an OCI upper,
	// once a walk has passed through it.
	names *dirNames
}

// isDir reports whether the entry is a directory.
func (e entry) isDir() bool { return e.info.IsDir() }

// isSymlink reports whether the entry is a symbolic link.
func (e entry) isSymlink() bool { return e.info.Mode()&fs.ModeSymlink != 0 }

// lowerPath returns the name at which the lowers hold the entry.
func (e entry) lowerPath() string {
	if e.lpath != "" {
		return e.lpath
	}
	return e.path
}

// src returns the entry's name in the layer that holds its topmost copy.
func (e entry) src() string {
	switch {
	case e.layer == 0:
		return e.path
	case e.lsrc != "":
		return e.lsrc
	}
	return e.lowerPath()
}

// lowerChildPath returns the name at which the lowers hold p, a child of
// the directory e.
func (e entry) lowerChildPath(p string) string {
	if e.lpath == "" {
		return p
	}
	return join(e.lpath, baseOf(p))
}

// mergesLowers reports whether lower layers contribute to the directory e.
func (e entry) mergesLowers() bool {
	return len(e.dirs) > 0 && e.dirs[len(e.dirs)-1] != 0
}

// inUpper reports whether the topmost copy is in the upper layer.
func (e entry) inUpper() bool { return e.layer == 0 }

// resolved is the outcome of walking a name: the directory that holds its
// last component and, if found, the entry itself. The entry's path is the
// resolved name whether found or not.
type resolved struct {
	parent entry  // the directory holding the name; the root for the root
	base   string // the last component, "." for the root
	entry         // the name itself, valid if found
	found  bool
}

// isRoot reports whether the walk ended at the overlay's root.
func (r resolved) isRoot() bool { return r.base == "." }

// maxSymlinks is how many symlinks one walk follows before ELOOP, as on Linux.
const maxSymlinks = 40

// lookup resolves name and fails with ENOENT if it does not exist. It
// follows a final symlink if follow is set. It takes o.mu for reading.
func (o *Overlay) lookup(name string, follow bool) (entry, error) {
	e, found, err := o.resolve(name, follow, true)
	if err == nil && !found {
		err = syscall.ENOENT
	}
	return e, err
}

// walk resolves name one component at a time through the layers. Symlinks
// in the middle are followed, and the last one too if follow is set; their
// targets resolve inside the overlay's root, as in a chroot. A missing last
// component is not an error: the result says found=false and gives the
// parent, which is what creating the name needs. name must be clean.
func (o *Overlay) walk(name string, follow bool) (resolved, error) {
	var buf [8]entry
	stack := append(buf[:0], o.root())
	rest := name
	direct := true // whether every resolved name so far is a prefix of name
	links := 0
	for rest != "" {
		c, after, cut := strings.Cut(rest, "/")
		rest = after
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			direct = false
			continue
		}
		parent := &stack[len(stack)-1]
		var p string
		if direct {
			p = name[:len(name)-len(rest)-boolInt(cut)] // no allocation
		} else {
			p = join(parent.path, c)
		}
		child, ok, err := o.enter(*parent, c, p)
		if err != nil {
			return resolved{}, err
		}
		last := onlyDots(rest)
		if !ok {
			if last {
				child.path = p
				return resolved{parent: *parent, base: c, entry: child}, nil
			}
			return resolved{}, syscall.ENOENT
		}
		if child.isSymlink() && (follow || !last) {
			if links++; links > maxSymlinks {
				return resolved{}, syscall.ELOOP
			}
			target, err := o.linkTarget(child)
			if err != nil {
				return resolved{}, err
			}
			if path.IsAbs(target) {
				stack = stack[:1] // chroot: an absolute target starts at the overlay's root
			}
			rest, direct = target+"/"+rest, false
			continue
		}
		stack = append(stack, child)
	}
	return o.endOfWalk(stack)
}

// enter looks up the component c, whose resolved name is p, in the
// directory parent.
func (o *Overlay) enter(parent entry, c, p string) (entry, bool, error) {
	switch {
	case !parent.isDir():
		return entry{}, false, syscall.ENOTDIR
	case isReserved(c):
		return entry{}, false, syscall.EINVAL
	}
	return o.mergedChild(parent, p)
}

// linkTarget returns the target of the symlink e; an empty one names
// nothing, as on Linux.
func (o *Overlay) linkTarget(e entry) (string, error) {
	target, err := o.layers[e.layer].readlink(e.src())
	if err == nil && target == "" {
		err = syscall.ENOENT
	}
	return target, err
}

// onlyDots reports whether the rest of a path names nothing more: it holds
// only "." components and slashes.
func onlyDots(rest string) bool {
	for rest != "" {
		var c string
		c, rest, _ = strings.Cut(rest, "/")
		if c != "" && c != "." {
			return false
		}
	}
	return true
}

// boolInt returns 1 for true and 0 for false.
func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// endOfWalk turns the stack of resolved directories into the walk's result,
// giving the entry it ends at its real FileInfo.
func (o *Overlay) endOfWalk(stack []entry) (resolved, error) {
	top := stack[len(stack)-1]
	info, err := o.infoOf(top)
	if err != nil {
		return resolved{}, err
	}
	top.info = info
	if len(stack) == 1 {
		return resolved{parent: top, base: ".", entry: top, found: true}, nil
	}
	return resolved{parent: stack[len(stack)-2], base: baseOf(top.path), entry: top, found: true}, nil
}

// root returns the entry of the overlay's root directory. Its FileInfo is
// a stand-in: see infoOf.
func (o *Overlay) root() entry {
	return entry{path: ".", layer: o.rootDirs[0], info: typeOnlyDir, dirs: o.rootDirs}
}

// rootInfo returns the FileInfo of the root's topmost copy.
func (o *Overlay) rootInfo() (fs.FileInfo, error) {
	return o.layers[o.rootDirs[0]].lstat(".")
}

// infoOf returns the FileInfo of e. A walk knows the type of the upper
// entries it passes through, and of the root, without asking the upper:
// their FileInfo is a typeOnly stand-in until the walk ends at them.
func (o *Overlay) infoOf(e entry) (fs.FileInfo, error) {
	if _, ok := e.info.(typeOnly); !ok {
		return e.info, nil
	}
	if e.path == "." {
		return o.rootInfo()
	}
	return o.layers[e.layer].lstat(e.src())
}

// typeOnlyOf returns the typeOnly stand-in of info's type.
func typeOnlyOf(info fs.FileInfo) fs.FileInfo {
	switch {
	case info.IsDir():
		return typeOnlyDir
	case info.Mode()&fs.ModeSymlink != 0:
		return typeOnlySymlink
	}
	return typeOnlyFile
}

// typeOnly is the FileInfo of an entry whose type alone is known.
type typeOnly fs.FileMode

// The typeOnly stand-ins, one per type the upper index tells apart.
var (
	typeOnlyDir     fs.FileInfo = typeOnly(fs.ModeDir | 0o755)
	typeOnlySymlink fs.FileInfo = typeOnly(fs.ModeSymlink | 0o777)
	typeOnlyFile    fs.FileInfo = typeOnly(0o644)
)

func (t typeOnly) Name() string       { return "" }
func (t typeOnly) Size() int64        { return 0 }
func (t typeOnly) Mode() fs.FileMode  { return fs.FileMode(t) }
func (t typeOnly) ModTime() time.Time { return time.Time{} }
func (t typeOnly) IsDir() bool        { return t.Mode().IsDir() }
func (t typeOnly) Sys() any           { return nil }

// findRootDirs returns the layers whose roots merge, top-down: every layer
// present, down to the first whose root is opaque.
func (o *Overlay) findRootDirs() ([]int, error) {
	var dirs []int
	for i, l := range o.layers {
		if l.fs == nil {
			continue
		}
		dirs = append(dirs, i)
		if opaque, err := l.isOpaque("."); err != nil || opaque {
			return dirs, err
		}
	}
	return dirs, nil
}

// mergedChild looks up p, a child of the merged directory parent. What the
// upper holds comes from the upper index, or from the upper itself in the
// kernel's format; what the lowers show comes from the lower index.
func (o *Overlay) mergedChild(parent entry, p string) (entry, bool, error) {
	if parent.dirs[0] != 0 {
		return o.lowerChild(p, parent.lowerChildPath(p))
	}
	if o.layers[0].names == nil {
		return o.probedChild(parent, p)
	}
	e, found, err := o.indexedChild(parent, p)
	if checkIndexed != nil && err == nil {
		checkIndexed(o, parent, p, e, found)
	}
	return e, found, err
}

// indexedChild is mergedChild for an OCI upper: the upper index says what
// the upper holds at p, and whether it whites p out.
func (o *Overlay) indexedChild(parent entry, p string) (entry, bool, error) {
	up := o.layers[0]
	d := parent.names
	if d == nil {
		var err error
		if d, err = up.names.listing(up, parent.path); err != nil {
			return entry{}, false, err
		}
	}
	kind := d.lookup(baseOf(p))
	lowers := parent.mergesLowers()
	switch {
	case kind&kindDir != 0:
		return o.indexedDir(p, parent.lowerChildPath(p), lowers)
	case kind&kindSymlink != 0:
		return entry{path: p, layer: 0, info: typeOnlySymlink}, true, nil
	case kind&kindFile != 0:
		return entry{path: p, layer: 0, info: typeOnlyFile}, true, nil
	case !lowers:
		return entry{}, false, nil
	}
	e, found, err := o.lowerChild(p, parent.lowerChildPath(p))
	switch {
	case err != nil || !found:
		return entry{}, false, err
	case kind&kindWhiteout != 0:
		return entry{path: p, whiteout: true}, false, nil
	}
	return e, true, nil
}

// indexedDir returns the merged entry of the directory p of an OCI upper,
// which the lowers hold at lp.
func (o *Overlay) indexedDir(p, lp string, lowers bool) (entry, bool, error) {
	up := o.layers[0]
	d, err := up.names.listing(up, p)
	if err != nil {
		return entry{}, false, err
	}
	e := entry{path: p, layer: 0, info: typeOnlyDir, dirs: upperOnly, names: d}
	if !lowers || d.opaque.Load() {
		return e, true, nil
	}
	le, err := o.lowerOnly(lp)
	if err != nil {
		return entry{}, false, err
	}
	if le.found && le.isDir() {
		e.dirs = le.underUpper
	}
	return e, true, nil
}

// checkIndexed, when set (by the tests), checks every answer of the upper
// index against the upper itself.
var checkIndexed func(o *Overlay, parent entry, p string, e entry, found bool)

// upperOnly is the dirs of a directory that only the upper holds. Like
// every dirs slice, it is never changed in place.
var upperOnly = []int{0}

// probedChild is mergedChild for a kernel-format upper, which it asks.
func (o *Overlay) probedChild(parent entry, p string) (entry, bool, error) {
	lowers := parent.mergesLowers()
	lp := parent.lowerChildPath(p)
	up := o.layers[0]
	info, err := up.lstat(p)
	switch {
	case err != nil && !isNotExist(err):
		return entry{}, false, err
	case err == nil && up.kernel && isWhiteoutInfo(info):
		return entry{path: p, whiteout: true}, false, nil
	case err == nil && !info.IsDir():
		return entry{path: p, layer: 0, info: info}, true, nil
	case err == nil:
		return o.upperDir(p, lp, info, lowers)
	case !lowers:
		return entry{}, false, nil
	}
	e, found, err := o.lowerChild(p, lp)
	if err != nil || !found {
		return entry{}, false, err
	}
	if wh, err := up.hasWhiteout(p); err != nil || wh {
		return entry{path: p, whiteout: wh}, false, err
	}
	return e, true, nil
}

// upperDir returns the merged entry of the upper directory p: the upper
// copy, merged with the lowers' copies unless it is opaque or the lowers
// show no directory there.
func (o *Overlay) upperDir(p, lp string, info fs.FileInfo, lowers bool) (entry, bool, error) {
	e := entry{path: p, layer: 0, info: info, dirs: []int{0}}
	up := o.layers[0]
	if !lowers && !up.noOCI {
		return e, true, nil
	}
	if opaque, err := up.isOpaque(p); err != nil || opaque {
		return e, true, err
	}
	if up.noOCI {
		var err error
		if lp, lowers, err = o.redirectedTo(p, lp, lowers); err != nil || !lowers {
			return e, err == nil, err
		}
	}
	if lp != p {
		e.lpath = lp
	}
	le, err := o.lowerOnly(lp)
	if err != nil {
		return entry{}, false, err
	}
	if le.found && le.isDir() {
		e.dirs = append(e.dirs, le.dirs...)
	}
	return e, true, nil
}

// lowerChild returns what the lowers alone show at p, which they hold at
// lp (p itself unless a redirect is at or above p).
func (o *Overlay) lowerChild(p, lp string) (entry, bool, error) {
	le, err := o.lowerOnly(lp)
	if lp != p && le.found {
		le.path, le.lpath = p, lp
	}
	return le.entry, le.found, err
}

// inLowers reports whether a lower layer would show base in parent if the
// upper held nothing there: then deleting it from the upper needs a whiteout.
func (o *Overlay) inLowers(parent entry, base string) (bool, error) {
	if !parent.mergesLowers() {
		return false, nil
	}
	le, err := o.lowerOnly(parent.lowerChildPath(join(parent.path, base)))
	return le.found, err
}

// statName returns what Stat (follow) or Lstat describes for name, under the
// name the caller used. It needs no o.use: it uses the layers only under
// o.mu, which Commit and Reset also take, or not at all when the lookup
// cache answers with a frozen FileInfo.
func (o *Overlay) statName(name string, follow bool) (fs.FileInfo, error) {
	clean, err := cleanName(name)
	if err != nil {
		return nil, err
	}
	e, found, err := o.lookupQuickly(clean, follow, true)
	switch {
	case err != nil:
		return nil, err
	case !found:
		return nil, syscall.ENOENT
	}
	if base := baseOf(clean); e.info.Name() != base {
		return namedInfo{e.info, base}, nil
	}
	return e.info, nil
}

// namedInfo is a FileInfo under the name the caller used, as os.Stat reports.
type namedInfo struct {
	fs.FileInfo
	name string
}

func (fi namedInfo) Name() string { return fi.name }
