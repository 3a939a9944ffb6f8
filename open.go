package overlay

import (
	"io"
	"os"
	"syscall"
	"time"

	"github.com/spf13/afero"
	"github.com/spf13/afero/mem"
)

// openFile is OpenFile's worker; name is the caller's, clean the cleaned one.
// It starts over if a lower file it was about to track was copied up,
// renamed or removed between its lookup and its tracking (see openReader).
func (o *Overlay) openFile(name, clean string, flag int, perm os.FileMode) (afero.File, error) {
	for range maxRetries {
		f, err := o.openOnce(name, clean, flag, perm)
		if err != errStale {
			return f, err
		}
	}
	return nil, syscall.EAGAIN
}

// openOnce is one attempt of openFile.
func (o *Overlay) openOnce(name, clean string, flag int, perm os.FileMode) (afero.File, error) {
	since := o.handles.epoch.Load()
	follow := flag&syscall.O_NOFOLLOW == 0 && flag&(os.O_CREATE|os.O_EXCL) != os.O_CREATE|os.O_EXCL
	if flag&os.O_CREATE != 0 && !o.readOnly() {
		return o.openCreate(name, clean, follow, flag, perm, since)
	}
	e, found, err := o.lookupQuickly(clean, follow, false)
	switch {
	case err != nil:
		return nil, err
	case found && flag&(os.O_CREATE|os.O_EXCL) == os.O_CREATE|os.O_EXCL:
		return nil, syscall.EEXIST
	case found:
		return o.openEntry(name, e, flag, since)
	case flag&os.O_CREATE != 0:
		return nil, syscall.EROFS
	}
	return nil, syscall.ENOENT
}

// openCreate opens name with O_CREATE: it creates the file under the lock if
// the name is free, and opens the existing file otherwise.
func (o *Overlay) openCreate(name, clean string, follow bool, flag int, perm os.FileMode, since uint64) (afero.File, error) {
	o.mu.Lock()
	r, err := o.walk(clean, follow)
	switch {
	case err != nil:
		o.mu.Unlock()
		return nil, err
	case r.found:
		o.mu.Unlock()
		if flag&os.O_EXCL != 0 {
			return nil, syscall.EEXIST
		}
		return o.openEntry(name, r.entry, flag, since)
	}
	defer o.mu.Unlock()
	return o.create(name, r, flag, perm)
}

// maxRetries bounds how often an operation starts over because another one
// changed its name under it.
const maxRetries = 100

// openEntry opens the existing entry e, copying it up first for write
// intent. since is the handle set's epoch from before e was looked up. Of
// e's FileInfo only the type may be known (see resolve).
func (o *Overlay) openEntry(name string, e entry, flag int, since uint64) (afero.File, error) {
	switch {
	case e.isSymlink():
		return nil, syscall.ELOOP // O_NOFOLLOW on a symlink
	case e.isDir() && (writeIntent(flag) || flag&os.O_CREATE != 0):
		return nil, syscall.EISDIR
	case e.isDir():
		return o.openDir(name, e, flag, since)
	case !writeIntent(flag):
		return o.openReader(name, e, flag, since)
	case o.readOnly():
		return nil, syscall.EROFS
	}
	return o.openWriter(name, e, flag, since)
}

// openWriter opens e to change it (for writing, or to truncate it),
// copying it up first. The handle is tracked, so that a Commit can move it
// to the file's copy in the new upper; like openReader, it fails with
// errStale if e changed since it was looked up.
func (o *Overlay) openWriter(name string, e entry, flag int, since uint64) (afero.File, error) {
	e, since, err := o.toUpper(e, flag&os.O_TRUNC == 0, since)
	if err != nil {
		return nil, err
	}
	lf, err := o.layers[0].open(e.path, upperFlag(flag), 0)
	if err != nil {
		return nil, err
	}
	f := o.writeHandle(name, flag, lf)
	if !o.handles.acquireWriter(e.path, f, since) {
		dropLayerHandle(lf) // the handle was never returned
		return nil, errStale
	}
	return f, nil
}

// writeHandle wraps the upper handle lf, opened for writing. An O_APPEND
// handle starts at offset 0, as on Linux, where a layer's may start at the
// end (MemMapFs's does): its writes go to the end anyway (see appendWrite).
func (o *Overlay) writeHandle(name string, flag int, lf afero.File) *file {
	if _, ok := osFile(lf); !ok && flag&os.O_APPEND != 0 {
		_, _ = lf.Seek(0, io.SeekStart) // best effort: only Seek and reads see the offset
	}
	return &file{o: o, name: name, flag: flag, f: lf}
}

// openReader opens e for reading. In an overlay with an upper, the handle
// is tracked, so that a copy-up can give it the upper copy, as on Linux
// since 4.19: a lower file's handle from the start, and an upper file's
// too, since a Commit turns its file into a lower one. In a read-only
// overlay nothing is ever copied up, so nothing is tracked. If the file was
// copied up, renamed or removed since e was looked up (a change the handle
// set counted after the epoch since touches its name), the handle would
// miss that, and might have opened another file: it fails with errStale
// and the caller looks up again.
func (o *Overlay) openReader(name string, e entry, flag int, since uint64) (afero.File, error) {
	f, err := o.newReader(name, e, flag)
	if err != nil {
		return nil, err
	}
	if o.readOnly() {
		return f, nil
	}
	if beforeTracking != nil {
		beforeTracking(e.path)
	}
	f.node = &f.own
	f.node.inUpper = e.inUpper()
	if !o.handles.acquire(e.path, f.node, since) {
		_ = f.f.Close() // best effort: the handle was never returned
		return nil, errStale
	}
	f.gen = f.node.gen.Load()
	return f, nil
}

// newReader opens e's file in its layer for reading, and wraps it in a
// handle. A regular file of a MemMapFs lower is opened as MemMapFs's Open
// would open it, from the file that its lookup kept (see layer.freeze),
// and in the same allocation as the handle.
func (o *Overlay) newReader(name string, e entry, flag int) (*file, error) {
	if mi, ok := e.info.(*memFileInfo); ok {
		h := &memReader{file: file{o: o, name: name, flag: flag}, m: *mem.NewReadOnlyFileHandle(mi.data)}
		h.f = &h.m
		return &h.file, nil
	}
	lf, err := o.layers[e.layer].openReading(e.src(), name)
	if err != nil {
		return nil, err
	}
	return &file{o: o, name: name, flag: flag, f: lf}, nil
}

// memReader is a handle on a regular file of a MemMapFs lower, together
// with the MemMapFs handle it wraps.
type memReader struct {
	file
	m mem.File
}

// openDir opens the directory e. Its handle is tracked, so that it follows
// the directory across renames and knows when it was removed, as a handle
// on a kernel overlay does; like openReader it fails with errStale if e
// changed since it was looked up.
func (o *Overlay) openDir(name string, e entry, flag int, since uint64) (afero.File, error) {
	info, err := o.infoOf(e) // the lookup may have left only the type
	if err != nil {
		return nil, err
	}
	d := &dirHandle{info: namedInfo{info, baseOf(cleanOrRoot(name))}}
	d.node.dir = true
	if !o.handles.acquire(e.path, &d.node, since) {
		return nil, errStale
	}
	return &file{o: o, name: name, flag: flag, dir: d}, nil
}

// beforeTracking, when set (by the tests), runs between the lookup of a
// file being opened for reading and the tracking of its handle.
var beforeTracking func(path string)

// toUpper returns the upper copy of the non-directory e, copying it up
// first if a lower layer holds it. With data false the content is not
// copied, since the caller truncates it. since is the handle set's epoch
// from before e was looked up; toUpper returns the one from before the
// entry it returns was.
func (o *Overlay) toUpper(e entry, data bool, since uint64) (entry, uint64, error) {
	for range maxRetries {
		if e.inUpper() {
			return e, since, nil
		}
		if err := o.copyUp(e, data); err != nil {
			return entry{}, 0, err
		}
		since = o.handles.epoch.Load()
		var err error
		if e, err = o.lookup(e.path, false); err != nil {
			return entry{}, 0, err
		}
	}
	return entry{}, 0, syscall.EAGAIN
}

// create creates the file that the walk r did not find, for OpenFile with
// O_CREATE. The caller holds o.mu for writing.
func (o *Overlay) create(name string, r resolved, flag int, perm os.FileMode) (afero.File, error) {
	p := r.path
	if err := o.ensureUpperParent(r); err != nil {
		return nil, err
	}
	at := p
	if o.overDevice(r) {
		at = o.tmpName()
	}
	up := o.layers[0]
	lf, err := up.open(at, flag&^os.O_TRUNC|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return nil, err
	}
	if at != p {
		err = o.takeParentGroup(at, p, false) // first: a chown clears set-user-ID
	}
	if err == nil {
		err = o.setCreatedMode(at, lf, perm)
	}
	if err == nil && at != p {
		err = o.placeOverDevice(at, p, false)
	}
	if err == nil {
		err = o.entryAdded(p, r)
	}
	if err != nil {
		_ = lf.Close()    // best effort: the create is undone below
		_ = up.remove(at) // best effort: a leftover empty file is a valid state
		return nil, err
	}
	f := o.writeHandle(name, flag, lf)
	o.handles.acquireWriter(p, f, o.handles.epoch.Load()) // under o.mu, nothing moves p
	return f, nil
}

// ensureUpperParent makes sure the upper holds the directory that the walk
// r ended in, copying it up if need be. The caller holds o.mu for writing.
func (o *Overlay) ensureUpperParent(r resolved) error {
	if r.parent.inUpper() {
		return nil
	}
	return o.ensureUpperDir(r.parent.path)
}

// setCreatedMode gives the new upper file p, open as lf, exactly perm: the
// upper may have applied a umask.
func (o *Overlay) setCreatedMode(p string, lf afero.File, perm os.FileMode) error {
	up := o.layers[0]
	if up.exactPerms {
		return nil
	}
	fi, err := lf.Stat()
	if err != nil || fi.Mode()&modeBits == perm&modeBits {
		return err
	}
	return chmodOpened(up, p, lf, perm&modeBits)
}

// chmodOpened sets the mode of the upper file p, open as lf: through the
// handle where it is a host file, which spares resolving the name again.
func chmodOpened(up layer, p string, lf afero.File, mode os.FileMode) error {
	if f, ok := osFile(lf); ok {
		return f.Chmod(mode)
	}
	return up.fs.Chmod(up.path(p), mode)
}

// entryAdded finishes adding the name p to the upper, where the walk r had
// found nothing: it drops the whiteout that p replaces, if r saw one, and
// marks the parent directory as changed. The caller holds o.mu for writing.
func (o *Overlay) entryAdded(p string, r resolved) error {
	if r.whiteout {
		if err := o.layers[0].dropWhiteout(p); err != nil {
			return err
		}
	}
	return o.touchDir(parentOf(p))
}

// touchDir sets the mtime of the upper directory dir to now after an entry
// in it changed, where the upper does not do so itself.
func (o *Overlay) touchDir(dir string) error {
	if o.autoDirTimes {
		return nil
	}
	up := o.layers[0]
	now := time.Now()
	return up.fs.Chtimes(up.path(dir), now, now)
}

// readOnly reports whether the overlay has no upper layer.
func (o *Overlay) readOnly() bool { return o.layers[0].fs == nil }

// upper returns the upper layer.
func (o *Overlay) upper() *layer { return &o.layers[0] }

// writeIntent reports whether flag asks to change the file, which copies a
// lower file up: write access or O_TRUNC. O_APPEND alone does not, as on
// Linux.
func writeIntent(flag int) bool {
	return writable(flag) || flag&os.O_TRUNC != 0
}

// upperFlag turns a caller's flags into those for opening the upper copy.
// O_RDONLY|O_TRUNC truncates, as on Linux, so it opens for writing; the
// handle still refuses writes.
func upperFlag(flag int) int {
	flag &^= os.O_CREATE | os.O_EXCL | syscall.O_NOFOLLOW
	if flag&os.O_TRUNC != 0 && !writable(flag) {
		flag |= os.O_RDWR
	}
	return flag
}
