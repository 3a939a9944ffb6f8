package overlay

import (
	"archive/tar"
	"errors"
	"io"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/spf13/afero"
)

// copyUp makes sure the upper holds its own copy of the non-directory e,
// which a lower layer holds. With data false (the caller truncates it) the
// content is not copied. Racing copy-ups of one path share one copy. When it
// returns, the upper holds the file, or the name has since been changed by
// another call; the caller looks it up again either way.
func (o *Overlay) copyUp(e entry, data bool) error {
	_, err, _ := o.copies.Do(e.path, func() (any, error) {
		return nil, o.copyUpFile(e, data)
	})
	return err
}

// copyUpFile copies e into the work directory without holding any lock,
// then renames the copy into place if e is still what the name shows.
func (o *Overlay) copyUpFile(e entry, data bool) error {
	tmp, err := o.copyToWork(e, data)
	if err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	cur, err := o.walk(e.path, false)
	if err == nil && (!cur.found || cur.layer != e.layer) {
		err = errStale
	}
	if err != nil {
		o.discard(tmp)
		if err == errStale {
			return nil
		}
		return err
	}
	return o.installCopy(tmp, e.path)
}

// installCopy puts tmp, the finished copy of the lower file or symlink at
// name, in place in the upper, and gives the read handles on the lower
// file the copy; if it cannot be put in place, it is thrown away. The
// caller holds o.mu for writing.
func (o *Overlay) installCopy(tmp, name string) error {
	if err := o.placeCopy(tmp, name); err != nil {
		o.discard(tmp)
		return err
	}
	o.handles.copiedUp(name, o.upper())
	return nil
}

// errStale says a copy-up found the name changed under it; the copy is
// thrown away and the caller's next lookup sees the new state.
var errStale = sentinel("overlay: name changed during the operation")

// sentinel is the type of the overlay's internal signals between workers;
// none reaches a caller.
type sentinel string

func (s sentinel) Error() string { return string(s) }

// placeCopy renames the finished copy tmp to name in the upper, creating the
// parent directories first. The parent's times are kept, as the kernel keeps
// them: a copy-up changes nothing a reader of the merged view can see.
// The caller holds o.mu for writing.
func (o *Overlay) placeCopy(tmp, name string) error {
	parent := parentOf(name)
	if err := o.ensureUpperDir(parent); err != nil {
		return err
	}
	up := o.layers[0]
	pinfo, err := up.lstat(parent)
	if err != nil {
		return err
	}
	atime, mtime := fileAtime(pinfo), pinfo.ModTime() // now: MemMapFs's FileInfo is live
	if err := up.rename(tmp, name); err != nil {
		return err
	}
	return up.fs.Chtimes(up.path(parent), atime, mtime)
}

// ensureUpperDir makes sure the directory dir, a resolved name, exists in
// the upper, copying it and its missing parents up with their lower modes,
// owners and times. The caller holds o.mu for writing.
func (o *Overlay) ensureUpperDir(dir string) error {
	r, err := o.walk(dir, false)
	switch {
	case err != nil:
		return err
	case !r.found:
		return syscall.ENOENT
	case r.inUpper():
		return nil
	}
	if err := o.ensureUpperDir(r.parent.path); err != nil {
		return err
	}
	tmp, err := o.makeWorkDir(r.info)
	if err != nil {
		return err
	}
	if err := o.copyXattrs(r.entry, tmp); err != nil {
		o.discard(tmp)
		return err
	}
	if err := o.placeCopy(tmp, dir); err != nil {
		o.discard(tmp)
		return err
	}
	return nil
}

// makeWorkDir creates an empty directory in the work directory with the
// mode, owner and times that info describes.
func (o *Overlay) makeWorkDir(info fs.FileInfo) (string, error) {
	up := o.layers[0]
	tmp := o.tmpName()
	if err := up.mkdir(tmp, 0o700); err != nil {
		return "", err
	}
	if err := up.copyAttrs(tmp, info); err != nil {
		o.discard(tmp)
		return "", err
	}
	return tmp, nil
}

// copyToWork copies the file or symlink e into a new name in the work
// directory, with its mode, owner and times, and returns that name.
func (o *Overlay) copyToWork(e entry, data bool) (string, error) {
	up := o.layers[0]
	tmp := o.tmpName()
	var err error
	if e.isSymlink() {
		err = o.copySymlink(e, tmp)
	} else {
		err = o.copyContent(e, tmp, data)
	}
	if err == nil {
		err = o.copyXattrs(e, tmp)
	}
	if err == nil {
		err = up.copyAttrs(tmp, e.info)
	}
	if err != nil {
		o.discard(tmp)
		return "", err
	}
	return tmp, nil
}

// copySymlink creates tmp in the upper as a symlink with e's target.
func (o *Overlay) copySymlink(e entry, tmp string) error {
	target, err := o.layers[e.layer].readlink(e.src())
	if err != nil {
		return err
	}
	return o.layers[0].symlink(target, tmp)
}

// copyContent streams e's bytes into the new upper file tmp (none if data is
// false). Memory use is constant whatever the file's size. The bytes are
// synced before the copy can take the lower file's place, as the kernel
// syncs a copy-up (unless WithVolatile): otherwise a power loss could leave
// an empty file where the lower one showed its content.
func (o *Overlay) copyContent(e entry, tmp string, data bool) error {
	dst, err := o.layers[0].open(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if data {
		reserve(dst, e.info.Size())
		err = copyFrom(dst, o.layers[e.layer], e.src())
		if err == nil && e.info.Size() > 0 && !o.cfg.volatile {
			err = dst.Sync()
		}
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

// copyFrom copies the file name of layer l into dst. Where both handles are
// host files it copies between them, so that the kernel copies in place
// (copy_file_range); elsewhere it streams with a pooled buffer.
func copyFrom(dst afero.File, l layer, name string) error {
	src, err := l.open(name, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer src.Close() // best effort: the source was only read
	if in, ok := osFile(src); ok {
		if out, ok := osFile(dst); ok {
			_, err = io.Copy(out, in)
			return err
		}
	}
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	_, err = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *buf)
	return err
}

// reserve makes room for size bytes in the new, empty file dst where the
// layer would otherwise grow its storage again and again as the copy
// streams in: a MemMapFs file keeps its bytes in one slice, which Truncate
// sizes once, and keeps when truncated back to nothing.
func reserve(dst afero.File, size int64) {
	if f, ok := memFile(dst); ok && size > 0 {
		if f.Truncate(size) == nil {
			_ = f.Truncate(0) // best effort: a failure leaves the file empty anyway
		}
	}
}

// osFile returns the *os.File behind f, which afero's OsFs returns as is
// and BasePathFs (also under ReadOnlyFs) wraps.
func osFile(f afero.File) (*os.File, bool) {
	t, ok := innerFile(f).(*os.File)
	return t, ok
}

// innerFile returns the handle behind BasePathFs's wrappers of it.
func innerFile(f afero.File) afero.File {
	for {
		b, ok := f.(*afero.BasePathFile)
		if !ok {
			return f
		}
		f = b.File
	}
}

// copyBuffers holds the buffers of copy-ups between layers that are not
// both on the host: 256 KiB each, so a copy-up makes few calls and holds
// constant memory whatever the file's size.
var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, 256<<10)
	return &b
}}

// copyAttrs gives name in l the owner, permission bits and times that info
// describes. The owner goes first, since changing it clears setuid bits. A
// process that may not give files away (EPERM) keeps its own ownership of
// the copy, as a copy-up by an unprivileged user must.
func (l layer) copyAttrs(name string, info fs.FileInfo) error {
	symlink := info.Mode()&fs.ModeSymlink != 0
	if uid, gid, ok := ownerOf(info); ok {
		err := l.chown(name, uid, gid, symlink)
		if err != nil && !errors.Is(err, syscall.EPERM) { // an unprivileged process keeps its own ownership
			return err
		}
	}
	if !symlink {
		if err := l.fs.Chmod(l.path(name), info.Mode()&modeBits); err != nil {
			return err
		}
	}
	return l.setTimes(name, info)
}

// ownerOf returns the owner that info reports: from the host's stat, or
// from a tar header (a TarFs layer, or a header's FileInfo).
func ownerOf(info fs.FileInfo) (uid, gid int, ok bool) {
	if uid, gid, ok := fileOwner(info); ok {
		return uid, gid, true
	}
	if h, ok := info.Sys().(*tar.Header); ok {
		return h.Uid, h.Gid, true
	}
	return 0, 0, false
}

// modeBits are the bits of a FileMode that chmod sets.
const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// setTimes gives name in l the access and modification times of info. A
// symlink's times are set where the layer is a host directory; elsewhere
// afero offers no way to, and they are left as they are.
func (l layer) setTimes(name string, info fs.FileInfo) error {
	atime, mtime := fileAtime(info), info.ModTime()
	if info.Mode()&fs.ModeSymlink == 0 {
		return l.fs.Chtimes(l.path(name), atime, mtime)
	}
	p, ok, err := l.hostPath(name)
	if !ok {
		return err
	}
	return lchtimes(p, atime, mtime)
}

// chown sets the owner of name in l. A symlink's owner is set where the
// layer is a host directory and left alone elsewhere.
func (l layer) chown(name string, uid, gid int, symlink bool) error {
	if !symlink {
		return l.fs.Chown(l.path(name), uid, gid)
	}
	p, ok, err := l.hostPath(name)
	if !ok {
		return err
	}
	return os.Lchown(p, uid, gid)
}

// discard removes a work-directory name left by a failed or stale operation.
func (o *Overlay) discard(tmp string) {
	up := o.layers[0]
	_ = up.removeAll(tmp) // best effort: New clears the work directory too
}

// prepareWorkDir creates the work directory in the upper, or empties what an
// interrupted operation left there, keeping the upper root's times. A
// kernel-format upper is left without one (see workState).
func (o *Overlay) prepareWorkDir() error {
	return setWorkDir(o.layers[0], !o.work.tidy)
}

// atomicCounter hands out unique numbers for work-directory names.
type atomicCounter = atomic.Uint64
