package overlay

import (
	"errors"
	"io/fs"
	"os"
	"syscall"

	"github.com/spf13/afero"
	"github.com/spf13/afero/mem"
)

// layer is one afero.Fs of the stack, addressed the way it expects: afero's
// MemMapFs keys "/a" and "a" as different files and wants the rooted form,
// while file systems built on io/fs accept only unrooted names.
type layer struct {
	fs     afero.Fs // nil for the missing upper of a read-only overlay
	rooted bool     // whether names are passed as "/a/b" rather than "a/b"
	memFs  bool     // whether fs is an *afero.MemMapFs

	// noOCI is set where the layer's OCI markers (".wh." files) are not
	// honoured: in a kernel-format upper.
	noOCI bool
	// kernel is set where the layer's kernel markers (whiteout devices,
	// opaque xattrs) are honoured: a kernel-format upper, or a lower that
	// is a directory on the host. Such a layer implements realPather.
	kernel bool
	// host is set where the layer is a directory on the host (see
	// hostRoot).
	host bool
	// xattrNS is the namespace of the overlay xattrs a kernel-format layer
	// holds: "trusted.overlay." or "user.overlay.".
	xattrNS string
	// exactPerms is set on an upper known to create names with exactly
	// the mode asked: no umask needs undoing (see probeExactPerms).
	exactPerms bool
	// names is the index of an OCI upper's names, nil in other layers. The
	// methods that change names (mkdir, open with O_CREATE, symlink,
	// remove, removeAll, rename) keep it current.
	names *upperIndex
}

// newLayer wraps fsys, choosing the rooted form unless fsys accepts only
// unrooted names.
func newLayer(fsys afero.Fs) layer {
	if fsys == nil {
		return layer{}
	}
	if _, err := fsys.Stat("/"); err != nil {
		if _, err := fsys.Stat("."); err == nil {
			return layer{fs: fsys}
		}
	}
	_, host := hostRoot(fsys)
	_, memFs := fsys.(*afero.MemMapFs)
	return layer{fs: fsys, rooted: true, host: host, memFs: memFs}
}

// hostRoot returns the host directory that fsys is, and whether it is one:
// fsys has RealPath (afero.BasePathFs, and wrappers that keep the method),
// and its root is the very directory that RealPath names on the host. A
// BasePathFs over a MemMapFs has RealPath too, but its names are no host
// files, and the host may hold another file at the path RealPath gives.
func hostRoot(fsys afero.Fs) (string, bool) {
	rp, ok := fsys.(realPather)
	if !ok {
		return "", false
	}
	p, err := rp.RealPath("/")
	if err != nil {
		return "", false
	}
	fi, err := fsys.Stat("/")
	if err != nil {
		return "", false
	}
	hfi, err := os.Stat(p)
	return p, err == nil && os.SameFile(fi, hfi)
}

// path turns an overlay name ("." or "a/b") into the name this layer expects.
func (l layer) path(name string) string {
	switch {
	case !l.rooted:
		return name
	case name == ".":
		return "/"
	}
	return "/" + name
}

// pathAs is path for a name that a caller spelled as spelled: where that
// spelling is already this layer's form of name, as "/a/b" is for a rooted
// layer, it is returned as is, which spares building the name again.
func (l layer) pathAs(name, spelled string) string {
	if l.rooted && len(spelled) == len(name)+1 && spelled[0] == '/' && spelled[1:] == name {
		return spelled
	}
	return l.path(name)
}

// lstat describes name in this layer without following a final symlink.
// Layers that cannot report symlinks have none, so Stat serves. A layer
// built on io/fs cannot hold a name that is not valid UTF-8, which Linux
// allows: for it, such a name is simply absent.
func (l layer) lstat(name string) (fs.FileInfo, error) {
	if !l.rooted && !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "lstat", Path: name, Err: fs.ErrNotExist}
	}
	if ls, ok := l.fs.(afero.Lstater); ok {
		fi, _, err := ls.LstatIfPossible(l.path(name))
		return fi, err
	}
	return l.fs.Stat(l.path(name))
}

// exists reports whether name is present in this layer. A layer error
// other than absence is returned.
func (l layer) exists(name string) (bool, error) {
	_, err := l.lstat(name)
	switch {
	case err == nil:
		return true, nil
	case isNotExist(err):
		return false, nil
	}
	return false, err
}

// readlink returns the target of the symlink name in this layer.
func (l layer) readlink(name string) (string, error) {
	if r, ok := l.fs.(afero.LinkReader); ok {
		return r.ReadlinkIfPossible(l.path(name))
	}
	return "", syscall.EINVAL
}

// readDir lists the directory name in this layer, unsorted.
func (l layer) readDir(name string) ([]fs.FileInfo, error) {
	f, err := l.fs.Open(l.path(name))
	return l.readOpened(name, f, err)
}

// readDirQuietly is readDir for the overlay's own bookkeeping: on the host
// it leaves the directory's access time alone, as a kernel lookup does.
// Where O_NOATIME is refused (a directory the caller does not own, without
// CAP_FOWNER), the access time is updated after all.
func (l layer) readDirQuietly(name string) ([]fs.FileInfo, error) {
	if oNoatime == 0 || !l.isHost() {
		return l.readDir(name)
	}
	f, err := l.fs.OpenFile(l.path(name), os.O_RDONLY|oNoatime, 0)
	if errors.Is(err, syscall.EPERM) {
		return l.readDir(name)
	}
	return l.readOpened(name, f, err)
}

// readOpened lists the directory name, opened as f (or not, with err).
func (l layer) readOpened(name string, f afero.File, err error) ([]fs.FileInfo, error) {
	if err != nil {
		return nil, err
	}
	defer f.Close() // best effort: the directory was only read
	list, err := f.Readdir(-1)
	if err != nil || !l.kernel {
		return list, err
	}
	return l.kernelMarkers(name, list)
}

// openReading opens name in this layer for reading; the caller spelled it
// as spelled (see pathAs).
func (l layer) openReading(name, spelled string) (afero.File, error) {
	return l.fs.Open(l.pathAs(name, spelled))
}

// memFileInfo is what a lookup remembers of a regular file in a MemMapFs
// lower: its FileInfo, frozen, and the file itself, which stays the same
// since the lower does (lowers are read-only by contract).
type memFileInfo struct {
	frozenInfo
	data *mem.FileData
}

// freeze returns fi, a FileInfo this lower gave, frozen (see remember). Of
// a regular file in a MemMapFs it keeps the file too, so that opening it
// costs no second lookup in the MemMapFs: a path cleaned, a lock, a map.
func (l layer) freeze(fi fs.FileInfo) fs.FileInfo {
	if mi, ok := fi.(*mem.FileInfo); ok && l.memFs && fi.Mode().IsRegular() {
		return &memFileInfo{frozenOf(fi), mi.FileData}
	}
	return frozenOf(fi)
}

// open opens name in this layer.
func (l layer) open(name string, flag int, perm os.FileMode) (afero.File, error) {
	if flag == os.O_RDONLY {
		return l.fs.Open(l.path(name)) // MemMapFs's OpenFile makes two handles for one
	}
	f, err := l.fs.OpenFile(l.path(name), flag, perm)
	if flag&os.O_CREATE != 0 {
		kind := kindUnchanged
		if flag&os.O_EXCL != 0 {
			kind = kindFile
		}
		l.names.made(name, kind, err)
	}
	return f, err
}

// mkdir creates the directory name in this layer.
func (l layer) mkdir(name string, perm os.FileMode) error {
	err := l.fs.Mkdir(l.path(name), perm)
	l.names.made(name, kindDir, err)
	return err
}

// remove removes the file or empty directory name from this layer.
func (l layer) remove(name string) error {
	err := l.fs.Remove(l.path(name))
	l.names.gone(name, err)
	return err
}

// removeAll removes name and everything under it from this layer.
func (l layer) removeAll(name string) error {
	err := l.fs.RemoveAll(l.path(name))
	l.names.gone(name, err)
	return err
}

// rename renames from to to in this layer.
func (l layer) rename(from, to string) error {
	kind := l.names.kindIn(from)
	err := l.fs.Rename(l.path(from), l.path(to))
	switch {
	case l.names == nil:
	case err != nil:
		l.names.unsure(from)
		l.names.unsure(to)
	default:
		if kind == 0 {
			if fi, err := l.lstat(to); err == nil {
				kind = kindOf(fi)
			}
		}
		l.names.renamed(from, to, kind)
	}
	return err
}

// isNotExist reports whether err says a name is absent from a layer. MemMapFs
// says ErrNotExist where a disk layer says ENOTDIR for the same situation.
func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// realPather is implemented by layers that are directories on the host, such
// as afero.BasePathFs, and by wrappers that keep that method.
type realPather interface {
	RealPath(name string) (string, error)
}

// hostPath returns the host path of the existing name when this layer is a
// directory on the host and the host path is the very file the layer shows
// (same device and inode); ok is false where it is not. It serves the calls
// afero lacks: a verbatim symlink (BasePathFs rewrites targets), and times
// and owners of a symlink. An error is the layer's failing to describe name.
func (l layer) hostPath(name string) (p string, ok bool, err error) {
	if !l.host {
		return "", false, nil
	}
	rp := l.fs.(realPather)
	p, err = rp.RealPath(l.path(name))
	if err != nil {
		return "", false, nil
	}
	fi, err := l.lstat(name)
	if err != nil {
		return "", false, err
	}
	hfi, err := os.Lstat(p)
	if err != nil || !os.SameFile(fi, hfi) {
		return "", false, nil
	}
	return p, true, nil
}

// symlink creates name as a symlink to target, stored verbatim.
func (l layer) symlink(target, name string) error {
	dir, ok, err := l.hostPath(parentOf(name))
	if err != nil {
		return err
	}
	switch lk, isLinker := l.fs.(afero.Linker); {
	case ok:
		err = os.Symlink(target, dir+"/"+baseOf(name))
	case isLinker && !l.isHost():
		err = lk.SymlinkIfPossible(target, l.path(name))
		if errors.Is(err, afero.ErrNoSymlink) { // a wrapper of a layer that cannot
			return errNoSymlink
		}
	default:
		return errNoSymlink
	}
	l.names.made(name, kindSymlink, err)
	return err
}

// isHost reports whether the layer is a directory on the host, whose
// SymlinkIfPossible (afero.BasePathFs) rewrites targets.
func (l layer) isHost() bool { return l.host }

// errNoSymlink is returned where the upper cannot hold symlinks. It wraps
// EPERM, what Linux says on such file systems, and matches
// afero.ErrNoSymlink.
var errNoSymlink error = noSymlinkError{}

type noSymlinkError struct{}

func (noSymlinkError) Error() string { return "symlinks not supported by the upper layer" }

func (noSymlinkError) Unwrap() error { return syscall.EPERM }

func (noSymlinkError) Is(target error) bool { return target == afero.ErrNoSymlink }
