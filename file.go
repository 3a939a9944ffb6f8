package overlay

import (
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/afero"
	"github.com/spf13/afero/mem"
)

// file is an open file or directory of the overlay. It enforces the open
// flags the way the kernel does, whatever the layer's own handle allows.
type file struct {
	o    *Overlay
	name string // as the caller passed it, returned by Name
	flag int

	mu     sync.Mutex // guards the fields below
	f      afero.File // the layer's handle; nil for a directory
	node   *node      // for a tracked handle (see handleSet): how it follows its file
	own    node       // what node points to, if set
	gen    uint64     // the node generation that f reflects
	dir    *dirHandle // for a directory
	closed bool
}

var _ afero.File = (*file)(nil)

// Name returns the name as passed to Open or OpenFile.
func (f *file) Name() string { return f.name }

// Read reads from the file, following it into the upper if it was copied up
// since it was opened. Reads hold the handle's lock, as *os.File's do. A
// read of nothing reads nothing and succeeds, as *os.File's does, whatever
// the handle.
func (f *file) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(p) == 0 && !f.closed {
		return 0, nil
	}
	if err := f.readable("read"); err != nil {
		return 0, err
	}
	n, err := f.f.Read(p)
	return n, f.wrap("read", pastEnd(err))
}

// ReadAt reads from the file at offset off. A short read always comes with
// an error, as io.ReaderAt requires, even where the layer's handle forgets.
// A negative offset is EINVAL; a read of nothing succeeds, as with
// *os.File.
func (f *file) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return 0, f.errf("read", os.ErrClosed)
	case off < 0:
		return 0, f.errf("readat", syscall.EINVAL)
	case len(p) == 0:
		return 0, nil
	}
	if err := f.readable("read"); err != nil {
		return 0, err
	}
	n, err := f.f.ReadAt(p, off)
	if n < len(p) && err == nil {
		err = io.EOF
	}
	return n, f.wrap("read", pastEnd(err))
}

// pastEnd turns a layer's report of a read that starts past the end of the
// file into io.EOF, which is what reading there gives on Linux. MemMapFs
// reports it as io.ErrUnexpectedEOF.
func pastEnd(err error) error {
	if err == io.ErrUnexpectedEOF {
		return io.EOF
	}
	return err
}

// Seek sets the offset. On a directory, seeking to the start rewinds the
// listing, as rewinddir does.
func (f *file) Seek(offset int64, whence int) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, f.errf("seek", os.ErrClosed)
	}
	if f.dir != nil {
		if offset == 0 && whence == io.SeekStart {
			f.dir.rewind()
		}
		return 0, nil
	}
	if err := f.follow(); err != nil {
		return 0, f.errf("seek", err)
	}
	if _, ok := osFile(f.f); !ok {
		return f.seekChecked(offset, whence)
	}
	ret, err := f.f.Seek(offset, whence)
	return ret, f.wrap("seek", err)
}

// Linux's SEEK_DATA and SEEK_HOLE, which the overlay follows whatever the
// host: the next data, and the next hole, at or after an offset.
const (
	seekData = 3
	seekHole = 4
)

// seekChecked seeks a layer's handle that is not a host file's as lseek
// does, where such a handle may not (MemMapFs goes to a negative offset):
// EINVAL for an unknown whence or an offset before the start, and
// SEEK_DATA and SEEK_HOLE answered for a file without holes. The caller
// holds f.mu.
func (f *file) seekChecked(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart, io.SeekCurrent, io.SeekEnd:
	case seekData, seekHole:
		return f.seekDataOrHole(offset, whence)
	default:
		return 0, f.errf("seek", syscall.EINVAL)
	}
	cur, err := f.f.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, f.wrap("seek", err)
	}
	ret, err := f.f.Seek(offset, whence)
	if err == nil && ret < 0 {
		_, err = f.f.Seek(cur, io.SeekStart)
		if err == nil {
			err = syscall.EINVAL
		}
	}
	if err != nil {
		return 0, f.errf("seek", err)
	}
	return ret, nil
}

// seekDataOrHole is lseek's SEEK_DATA and SEEK_HOLE on a file without
// holes: the data is everywhere before the end, and the only hole is the
// end; at or past the end, or before the start, there is neither (ENXIO).
// The caller holds f.mu.
func (f *file) seekDataOrHole(offset int64, whence int) (int64, error) {
	fi, err := f.f.Stat()
	if err != nil {
		return 0, f.wrap("seek", err)
	}
	end := fi.Size()
	if offset < 0 || offset >= end {
		return 0, f.errf("seek", syscall.ENXIO)
	}
	if whence == seekHole {
		offset = end
	}
	return f.f.Seek(offset, io.SeekStart)
}

// Write writes to the file; a handle not opened for writing gets EBADF.
// With O_APPEND every write goes to the end of the file, as on Linux.
func (f *file) Write(p []byte) (int, error) {
	defer f.o.holdStack().releaseStack()
	defer f.o.beginChange().endChange()
	if f.flag&os.O_APPEND != 0 {
		return f.appendWrite(p)
	}
	lf, err := f.writer("write")
	if err != nil || len(p) == 0 {
		return 0, err // an empty write changes nothing on Linux, not even the mtime
	}
	n, err := lf.Write(p)
	return n, f.wrap("write", err)
}

// appendWrite is Write on an O_APPEND handle. A host file's handle appends
// by itself; for any other layer's handle, which may append only once, at
// open (MemMapFs does), the offset is moved to the end first, under the
// handle's lock, so that two appends through it never overlap.
func (f *file) appendWrite(p []byte) (int, error) {
	lf, err := f.writer("write")
	if err != nil || len(p) == 0 {
		return 0, err // an empty write changes nothing on Linux, not even the mtime
	}
	if _, ok := osFile(lf); ok {
		n, err := lf.Write(p)
		return n, f.wrap("write", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := lf.Seek(0, io.SeekEnd); err != nil {
		return 0, f.wrap("write", err)
	}
	n, err := lf.Write(p)
	return n, f.wrap("write", err)
}

// WriteAt writes to the file at offset off.
//
// As with *os.File, it refuses a handle opened with O_APPEND (where Linux's
// pwrite would append) and a negative offset, with EINVAL, and writing
// nothing succeeds on any handle.
func (f *file) WriteAt(p []byte, off int64) (int, error) {
	if err := f.writeAtCheck(off); err != nil || len(p) == 0 {
		return 0, err
	}
	defer f.o.holdStack().releaseStack()
	defer f.o.beginChange().endChange()
	lf, err := f.writer("write")
	if err != nil {
		return 0, err
	}
	if _, ok := osFile(lf); ok {
		n, err := lf.WriteAt(p, off)
		return n, f.wrap("write", err)
	}
	return f.writeAtKeepingOffset(lf, p, off)
}

// writeAtKeepingOffset is WriteAt through the handle lf of a layer that is
// not the host's, which may move the handle's offset (MemMapFs does):
// pwrite leaves it where it was, so it is put back.
func (f *file) writeAtKeepingOffset(lf afero.File, p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur, err := lf.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, f.wrap("write", err)
	}
	n, err := lf.WriteAt(p, off)
	if _, serr := lf.Seek(cur, io.SeekStart); err == nil {
		err = serr
	}
	return n, f.wrap("write", err)
}

// writeAtCheck returns the error *os.File's WriteAt gives before writing
// anything, if any.
func (f *file) writeAtCheck(off int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return f.errf("write", os.ErrClosed)
	case f.flag&os.O_APPEND != 0, off < 0:
		return f.errf("writeat", syscall.EINVAL)
	}
	return nil
}

// WriteString writes s to the file.
func (f *file) WriteString(s string) (int, error) {
	return f.Write([]byte(s))
}

// Truncate changes the file's size; a handle not opened for writing, and a
// negative size, get EINVAL, as ftruncate does.
func (f *file) Truncate(size int64) error {
	defer f.o.holdStack().releaseStack()
	defer f.o.beginChange().endChange()
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return f.errf("truncate", os.ErrClosed)
	case f.dir != nil || !writable(f.flag) || size < 0:
		return f.errf("truncate", syscall.EINVAL)
	}
	return f.wrap("truncate", f.f.Truncate(size))
}

// Sync commits the file's contents to stable storage where the layer can.
func (f *file) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return f.errf("sync", os.ErrClosed)
	case f.dir != nil:
		return nil
	}
	return f.wrap("sync", f.f.Sync())
}

// Stat describes the file; for a directory, the topmost copy as it is now.
func (f *file) Stat() (os.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, f.errf("stat", os.ErrClosed)
	}
	if f.dir != nil {
		return f.dir.stat(f.o), nil
	}
	if err := f.follow(); err != nil {
		return nil, f.errf("stat", err)
	}
	fi, err := f.f.Stat()
	if err != nil {
		return nil, f.errf("stat", err)
	}
	return namedInfo{fi, baseOf(cleanOrRoot(f.name))}, nil
}

// Close closes the file. Closing twice returns an error wrapping
// os.ErrClosed.
func (f *file) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return f.errf("close", os.ErrClosed)
	}
	f.closed = true
	if f.node != nil {
		f.o.handles.release(f.node)
		f.node = nil
	}
	if f.dir != nil {
		f.o.handles.release(&f.dir.node)
	}
	if f.f == nil || mtimeOnlyClose(f.f) {
		return nil
	}
	if writeIntent(f.flag) { // the layer's handle is writable
		defer f.o.beginChange().endChange() // the layer may set the mtime
	}
	if err := f.f.Close(); err != nil {
		return f.errf("close", err)
	}
	return nil
}

// moveTo switches the handle, open to change its file, to c, the file's
// copy in the new upper after a Commit, at the same offset. The handle of
// the committed file is let go. If the offset cannot be carried over, or
// the handle was closed meanwhile, c is let go instead.
func (f *file) moveTo(c afero.File) {
	f.mu.Lock()
	defer f.mu.Unlock()
	keep := !f.closed
	if keep {
		off, err := f.f.Seek(0, io.SeekCurrent)
		if err == nil {
			_, err = c.Seek(off, io.SeekStart)
		}
		keep = err == nil
	}
	if keep {
		f.f, c = c, f.f
	}
	dropLayerHandle(c)
}

// dropLayerHandle closes lf, a layer's handle that no overlay handle uses,
// without changing the file: a MemMapFs handle, whose Close would set the
// mtime if it is writable, is left to the garbage collector.
func dropLayerHandle(lf afero.File) {
	if !mtimeOnlyClose(lf) {
		_ = lf.Close() // best effort: nothing was written through it since
	}
}

// mtimeOnlyClose reports whether closing the layer's handle lf would do
// nothing but mark it closed and, if it is writable, set the file's mtime
// to now, which Linux's close never does: so it is for a MemMapFs handle,
// bare or wrapped by BasePathFs, which is then left to the garbage
// collector rather than closed.
func mtimeOnlyClose(lf afero.File) bool {
	_, ok := memFile(lf)
	return ok
}

// memFile returns the MemMapFs handle behind f, which MemMapFs returns as
// is and BasePathFs over a MemMapFs wraps.
func memFile(f afero.File) (*mem.File, bool) {
	t, ok := innerFile(f).(*mem.File)
	return t, ok
}

// Readdir returns the merged directory's entries in name order: n > 0
// returns at most n and then a bare io.EOF; n <= 0 returns the rest and nil.
func (f *file) Readdir(n int) ([]os.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.dirCheck(); err != nil {
		return nil, err
	}
	list, err := f.dir.next(f.o, n)
	if err != nil && err != io.EOF {
		return list, f.errf("readdirent", err)
	}
	return list, err
}

// Readdirnames returns the names Readdir would return.
func (f *file) Readdirnames(n int) ([]string, error) {
	list, err := f.Readdir(n)
	names := make([]string, len(list))
	for i, fi := range list {
		names[i] = fi.Name()
	}
	return names, err
}

// ReadDir returns the entries Readdir would return, as fs.DirEntry values,
// so the overlay serves io/fs directly through afero.NewIOFS.
func (f *file) ReadDir(n int) ([]fs.DirEntry, error) {
	list, err := f.Readdir(n)
	entries := make([]fs.DirEntry, len(list))
	for i, fi := range list {
		entries[i] = fs.FileInfoToDirEntry(fi)
	}
	return entries, err
}

// dirCheck returns the error for a directory call on this handle, if any.
func (f *file) dirCheck() error {
	switch {
	case f.closed:
		return f.errf("readdirent", os.ErrClosed)
	case f.dir == nil:
		return f.errf("readdirent", syscall.ENOTDIR)
	}
	return nil
}

// readable returns the error the kernel gives for reading this handle, if
// any, after following a copy-up. The caller holds f.mu.
func (f *file) readable(op string) error {
	switch {
	case f.closed:
		return f.errf(op, os.ErrClosed)
	case f.dir != nil:
		return f.errf(op, syscall.EISDIR)
	case f.flag&(os.O_WRONLY|os.O_RDWR) == os.O_WRONLY:
		return f.errf(op, syscall.EBADF)
	}
	if err := f.follow(); err != nil {
		return f.errf(op, err)
	}
	return nil
}

// writer returns the layer handle to write to, or the error the kernel
// gives for writing this handle.
func (f *file) writer(op string) (afero.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return nil, f.errf(op, os.ErrClosed)
	case f.dir != nil || !writable(f.flag):
		return nil, f.errf(op, syscall.EBADF)
	}
	return f.f, nil
}

// follow switches a read-only handle to the upper copy once its file has
// been copied up, keeping the offset. The handle stays tracked, since a
// Commit can make the copy a lower file in turn. The caller holds f.mu.
func (f *file) follow() error {
	if f.node == nil || f.node.gen.Load() == f.gen {
		return nil
	}
	nf, gen := f.o.handles.takeCopy(f.node)
	f.gen = gen
	if nf == nil {
		return nil
	}
	off, err := f.f.Seek(0, io.SeekCurrent)
	if err == nil {
		_, err = nf.Seek(off, io.SeekStart)
	}
	if err != nil {
		_ = nf.Close() // best effort: the new handle was never used
		return err
	}
	_ = f.f.Close() // best effort: the lower handle was only read
	f.f = nf
	return nil
}

// errf labels err with op and the handle's name, dropping the layer's own
// labels so that no host path leaks.
func (f *file) errf(op string, err error) error {
	return &fs.PathError{Op: op, Path: f.name, Err: errnoOf(err)}
}

// wrap relabels an error from the layer's handle; nil and a bare io.EOF
// pass unchanged, as callers compare them with ==.
func (f *file) wrap(op string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	return f.errf(op, err)
}

// writable reports whether flag opens a file for writing.
func writable(flag int) bool {
	return flag&(os.O_WRONLY|os.O_RDWR) != 0
}

// cleanOrRoot cleans a caller's name for display, "." for the root.
func cleanOrRoot(name string) string {
	clean, err := cleanName(name)
	if err != nil {
		return strings.TrimPrefix(name, "/")
	}
	return clean
}
