package overlay

import (
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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
	node   *node      // for a read-only handle on a lower file: follows copy-up
	own    node       // what node points to, if set
	gen    uint64     // the node generation that f reflects
	dir    *dirHandle // for a directory
	closed bool

	// keepTimes is set on a handle open for writing in the layer (which
	// O_TRUNC alone makes it) whose layer may set the file's mtime on
	// Close, which Linux's close never does (MemMapFs does, and its
	// handles are not closed at all); Close then restores the mtime the
	// file had just before. up and upperPath name the file:
	// the layer it was opened in stays right after a Commit.
	keepTimes bool
	up        *layer
	upperPath string
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

// seekChecked seeks a layer's handle that is not a host file's, refusing
// with EINVAL what lseek refuses and such a handle may not (MemMapFs goes
// to a negative offset): an unknown whence, or an offset before the start.
// The caller holds f.mu.
func (f *file) seekChecked(offset int64, whence int) (int64, error) {
	if whence != io.SeekStart && whence != io.SeekCurrent && whence != io.SeekEnd {
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

// Write writes to the file; a handle not opened for writing gets EBADF.
// With O_APPEND every write goes to the end of the file, as on Linux.
func (f *file) Write(p []byte) (int, error) {
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

// Truncate changes the file's size; a handle not opened for writing gets
// EINVAL, as ftruncate does.
func (f *file) Truncate(size int64) error {
	defer f.o.beginChange().endChange()
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return f.errf("truncate", os.ErrClosed)
	case f.dir != nil || !writable(f.flag):
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
	var mtime time.Time
	if f.keepTimes {
		if fi, err := f.f.Stat(); err == nil {
			mtime = fi.ModTime() // read now: MemMapFs's FileInfo is live
		}
	}
	if err := f.f.Close(); err != nil {
		return f.errf("close", err)
	}
	if !mtime.IsZero() {
		_ = f.up.fs.Chtimes(f.up.path(f.upperPath), mtime, mtime) // best effort: only the layer's own bump is undone
	}
	return nil
}

// mtimeOnlyClose reports whether closing the layer's handle lf would do
// nothing but mark it closed and, if it is writable, set the file's mtime
// to now, which Linux's close never does: so it is for a MemMapFs handle,
// which is then left to the garbage collector rather than closed.
func mtimeOnlyClose(lf afero.File) bool {
	_, ok := lf.(*mem.File)
	return ok
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

// follow switches a read-only handle on a lower file to the upper copy once
// the file has been copied up, keeping the offset. The caller holds f.mu.
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
	f.o.handles.release(f.node)
	f.node = nil
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

// dirHandle is the state of an open merged directory. Its listing is read
// on first use and kept until rewound, as the kernel's readdir cache is.
// Its node, in the overlay's handle set, names the directory: it follows
// renames, and a listing of a removed directory fails with ENOENT, as
// getdents on a removed directory does.
type dirHandle struct {
	node   node
	info   fs.FileInfo // the topmost copy when opened
	list   []fs.FileInfo
	loaded bool
}

// next returns up to n entries (all if n <= 0) from the current position.
func (d *dirHandle) next(o *Overlay, n int) ([]fs.FileInfo, error) {
	if !d.loaded {
		dir, ok := o.handles.name(&d.node)
		if !ok {
			return nil, syscall.ENOENT
		}
		list, err := o.listDir(dir)
		if err != nil {
			return nil, err
		}
		d.list, d.loaded = list, true
	}
	if n <= 0 {
		rest := d.list
		d.list = nil
		if rest == nil {
			rest = []fs.FileInfo{}
		}
		return rest, d.end(o, nil)
	}
	if len(d.list) == 0 {
		return nil, d.end(o, io.EOF)
	}
	n = min(n, len(d.list))
	page := d.list[:n:n]
	d.list = d.list[n:]
	return page, nil
}

// end is what reaching the end of the listing reports: atEnd, or ENOENT if
// the directory was removed since it was opened, as getdents reports when
// asked for more of a removed directory.
func (d *dirHandle) end(o *Overlay, atEnd error) error {
	if _, ok := o.handles.name(&d.node); !ok {
		return syscall.ENOENT
	}
	return atEnd
}

// rewind makes the next read list the directory afresh.
func (d *dirHandle) rewind() {
	d.list, d.loaded = nil, false
}

// stat returns the topmost copy of the directory as it is now, or as it was
// when opened if it has gone since.
func (d *dirHandle) stat(o *Overlay) fs.FileInfo {
	dir, ok := o.handles.name(&d.node)
	if !ok {
		return d.info
	}
	o.mu.RLock()
	r, err := o.walk(dir, false)
	o.mu.RUnlock()
	if err != nil || !r.found {
		return d.info
	}
	return namedInfo{r.info, d.info.Name()}
}

// listDir lists the merged directory that the resolved name dir is now; a
// directory removed since it was opened lists as empty.
func (o *Overlay) listDir(dir string) ([]fs.FileInfo, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	r, err := o.walk(dir, false)
	if err != nil || !r.found || !r.isDir() {
		return nil, nil
	}
	return o.listing(r.entry)
}

// handleSet tracks the lower files that read-only handles have open, so that
// a handle can follow its file into the upper after a copy-up, and after a
// rename, as on Linux since 4.19; and the directories that handles have
// open, so that they follow renames and see removals.
type handleSet struct {
	mu    sync.Mutex       // guards nodes and every node's path, upper, next and gone
	nodes map[string]*node // by resolved name: the first of the handles on it

	// epoch counts the copy-ups, renames and removals reported, so that a
	// handle about to be tracked can tell whether its file changed since
	// it was looked up. It changes under mu.
	epoch atomic.Uint64
}

// node is one handle's record of the lower file (read-only handles) or the
// directory it has open. It lives in the handle, so that opening allocates
// nothing more; the handles on one name are chained.
type node struct {
	path string
	next *node // the next handle on the same name
	gone bool  // whether the name was removed or replaced

	// copy is the upper copy of a lower file, opened for the handle when
	// the file was copied up, until the handle switches to it. It is that
	// copy whatever happens to the name afterwards: removed, or replaced,
	// it is still what the handle reads, as a kernel overlay's handle
	// reads the copy its inode was given.
	copy afero.File
	gen  atomic.Uint64 // bumped when copy is set
}

// acquire records that the handle of n has the file name open, unless
// the set's epoch has moved on from since: then it reports false, and the
// caller looks the name up again.
func (s *handleSet) acquire(name string, n *node, since uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch.Load() != since {
		return false
	}
	if s.nodes == nil {
		s.nodes = make(map[string]*node)
	}
	n.path, n.next = name, s.nodes[name]
	s.nodes[name] = n
	return true
}

// release forgets the handle of n, closing the upper copy opened for it if
// the handle never switched to it. A node the set no longer holds (its
// file was removed) is left alone.
func (s *handleSet) release(n *node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n.copy != nil {
		_ = n.copy.Close() // best effort: the copy was only opened
		n.copy = nil
	}
	first := s.nodes[n.path]
	switch {
	case first == n && n.next == nil:
		delete(s.nodes, n.path)
		return
	case first == n:
		s.nodes[n.path] = n.next
		return
	}
	for p := first; p != nil; p = p.next {
		if p.next == n {
			p.next = n.next
			return
		}
	}
}

// takeCopy returns the upper copy opened for n's handle, if any, which the
// handle owns from then on, and the generation that reflects.
func (s *handleSet) takeCopy(n *node) (afero.File, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := n.copy
	n.copy = nil
	return c, n.gen.Load()
}

// name returns n's current name, and false if it was removed or replaced
// since.
func (s *handleSet) name(n *node) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return n.path, !n.gone
}

// copiedUp records that name now has its copy in the upper up, and opens
// that copy for every handle on the lower file, which switches to it on
// its next call. The caller holds o.mu for writing, so the copy is still at
// name. A copy that cannot be opened leaves the handle reading the lower
// file.
func (s *handleSet) copiedUp(name string, up *layer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epoch.Add(1)
	for n := s.nodes[name]; n != nil; n = n.next {
		c, err := up.open(name, os.O_RDONLY, 0)
		if err != nil {
			continue
		}
		if n.copy != nil {
			_ = n.copy.Close() // best effort: a copy never read, from before a Commit
		}
		n.copy = c
		n.gen.Add(1)
	}
}

// renamed records that oldName and everything under it moved to newName.
// Handles on a file the move replaced are forgotten. A lower file is
// copied up before it moves, so no handle has a copy to open here.
func (s *handleSet) renamed(oldName, newName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epoch.Add(1)
	if oldName == newName {
		return
	}
	s.forget(newName)
	var moved []*node
	for p, n := range s.nodes {
		if under(p, oldName) {
			delete(s.nodes, p)
			moved = append(moved, n)
		}
	}
	for _, first := range moved {
		p := newName + first.path[len(oldName):]
		for n := first; n != nil; n = n.next {
			n.path = p
		}
		s.nodes[p] = first
	}
}

// removed forgets name and everything under it: handles keep reading what
// they have, as an unlinked file's handles do.
func (s *handleSet) removed(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epoch.Add(1)
	s.forget(name)
}

// forget drops the handles on name and everything under it from the set,
// marking them gone. The caller holds s.mu.
func (s *handleSet) forget(name string) {
	for p, first := range s.nodes {
		if under(p, name) {
			delete(s.nodes, p)
			for n := first; n != nil; n = n.next {
				n.gone = true
			}
		}
	}
}

// under reports whether name is dir or lies beneath it.
func under(name, dir string) bool {
	rest, ok := strings.CutPrefix(name, dir)
	return ok && (rest == "" || rest[0] == '/')
}
