// Package overlay stacks afero file systems the way Linux OverlayFS stacks
// directories: one writable upper layer over any number of read-only lower
// layers, seen together as one merged tree.
//
// The reference for every call is Go's os package on a kernel overlay mount
// (mount -t overlay -o lowerdir=…,upperdir=…,redirect_dir=on): an [Overlay]
// returns the same results, the same errnos and leaves the same merged tree.
//
// # Layers
//
// Lookups go top-down: the upper layer first, then lowers[0], lowers[1] and
// so on. The topmost non-directory wins and hides everything beneath it,
// including the children of a same-named directory further down. Directories
// of the same name merge: a listing is the union of their entries, sorted by
// name, with the upper copy of a name winning. Names are cleaned and rooted,
// so "a/b", "/a/b" and "/a/../a/b" are one file, and nothing, neither a name
// nor a symlink, can reach outside the overlay's root: symlinks are resolved
// in the merged view as if the overlay were the root of a chroot.
//
// # Whiteouts
//
// Deleting a name that a lower layer holds leaves a whiteout in the upper: an
// empty file ".wh.NAME" beside it. A directory created where a lower one was
// deleted is opaque: it holds an empty file ".wh..wh..opq" so that the old
// lower contents stay hidden. This is the OCI image-layer format, so the
// upper is directly a valid image-layer diff, and lowers in that format (image
// layers) are honoured too. Every name beginning ".wh." is reserved: it never
// appears in the merged view, and creating one fails with EINVAL.
//
// WithFormat(FormatKernel) keeps the upper in the kernel's own format
// instead, so that the kernel can mount the same directories: a whiteout is
// a character device 0:0 under the name itself, an opaque directory has the
// xattr trusted.overlay.opaque="y" (user.overlay.opaque WithUserXattr), and
// a merged directory is renamed by giving it a trusted.overlay.redirect
// xattr, as with redirect_dir=on. It needs an upper that is a directory on
// the host (an afero.Fs with RealPath). Lowers that are directories on the
// host are read in both formats, so a stack may mix them; [Convert]
// rewrites a layer from one format to the other.
//
// # Copy-up
//
// A file is copied into the upper layer the first time it is opened for
// writing, truncated, or has its metadata changed, never on a read-only open.
// The copy keeps content, permission bits, times and, where the layers report
// them, owners; missing parent directories are copied up with the lower
// modes and times. The copy is built in a hidden work directory in the upper
// (".wh..wh.work") and renamed into place, so no partial file is ever visible.
// A read-only handle opened before a copy-up follows the file into the upper
// and reads the new data from its own offset, as on Linux since 4.19.
//
// Renaming a directory that lower layers contribute to first copies the
// whole merged directory up and makes it opaque (the OCI format has no
// redirects), then renames it in one step, so a failure or a crash leaves
// the old name as it was.
//
// # Image layers
//
// Because the upper is an OCI layer diff, the overlay works with images as
// Docker does: [Overlay.Changes] lists what the upper changes, [Overlay.Commit]
// freezes the upper into a new lower, [Overlay.Reset] discards it,
// [ExportLayer] writes it as a layer tar and [ApplyLayer] applies one,
// [NewTarFs] stacks a layer tar as a lower without extracting it, and
// [Flatten] squashes the merged view into one file system.
//
// # Concurrency and caching
//
// An Overlay is safe for concurrent use if its layers are. Commit and Reset
// wait for the calls in progress and hold new ones off while they swap or
// empty the layers. Copy-ups of one file by racing goroutines produce one
// copy, and a long copy-up does not block operations on other paths.
// Handles are safe for concurrent use as *os.File is.
//
// Lookups cost the same whatever the number of lowers, and usually less
// than a Stat of the layers themselves: what the lowers show is indexed
// once, an OCI upper's directory listings are read once and then kept
// current by the overlay's own changes, and a lookup is remembered until the
// next change of a name. So lowers must not change while in use, and the
// upper must change only through the overlay, as the kernel asks of its
// upperdir; reading the upper is fine. [Overlay.Refresh] forgets it all,
// for a caller that changed a layer anyway.
package overlay

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/afero"
	"golang.org/x/sync/singleflight"
)

// Overlay is an afero.Fs that merges a writable upper layer over read-only
// lower layers with the semantics of Linux OverlayFS.
type Overlay struct {
	// layers holds the upper at index 0 (with a nil fs when the overlay is
	// read-only) and then the lowers, topmost first. An element is changed
	// only while its slice is built (by New, or by Commit under o.mu, which
	// builds a new slice), so a handle may keep a pointer to the upper it
	// was opened in.
	layers []layer

	// autoDirTimes reports whether the upper updates a directory's mtime
	// by itself when an entry is added or removed, as real file systems do.
	autoDirTimes bool

	// ops is held for reading by every call that uses the layer list
	// outside mu, for the whole call, and by every write through a handle;
	// Commit and Reset hold it for writing while they change the list. It
	// is always taken before mu and before a handle's lock. (Stat and Lstat
	// use the layers under mu only.)
	ops sync.RWMutex

	// mu guards the upper layer's namespace: lookups hold it for reading,
	// and every change to the upper's names (create, remove, rename,
	// whiteouts, the last step of a copy-up) holds it for writing. It is
	// never held across a file copy-up's data copy.
	mu sync.RWMutex

	cfg      config     // what New's options set
	rootDirs []int      // the layers whose roots merge, top-down; fixed at New
	lowers   lowerIndex // what the lowers show, looked up once
	lookups  lookupCache
	listings listingCache

	work    workState          // the work directory's life
	copies  singleflight.Group // one copy-up per path at a time
	handles handleSet          // read-only handles on lower files and directory handles, so they follow copy-ups and renames
	tmpSeq  atomicCounter
}

var (
	_ afero.Fs        = (*Overlay)(nil)
	_ afero.Lstater   = (*Overlay)(nil)
	_ afero.Symlinker = (*Overlay)(nil)
)

// Option configures an Overlay in New.
type Option func(*config)

// config collects what the options set.
type config struct {
	format    Format
	userXattr bool
	volatile  bool
}

// Format is how a layer marks whiteouts and opaque directories.
type Format int

const (
	// FormatOCI is the OCI image-layer format: a whiteout for NAME is an
	// empty file ".wh.NAME" beside it, and an opaque directory holds an
	// empty file ".wh..wh..opq". Any afero.Fs can hold it.
	FormatOCI Format = iota
	// FormatKernel is the format of the kernel's own upper directories: a
	// whiteout is a character device 0:0 under the name itself, and an
	// opaque directory has the xattr trusted.overlay.opaque="y" (with
	// WithUserXattr, user.overlay.opaque). It needs a layer that is a
	// directory on the host: one with the method RealPath(name string)
	// (string, error), as afero.BasePathFs over afero.OsFs has.
	FormatKernel
)

// String returns "oci" or "kernel".
func (f Format) String() string {
	switch f {
	case FormatOCI:
		return "oci"
	case FormatKernel:
		return "kernel"
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

// WithFormat selects the format of the markers the overlay writes in the
// upper layer (and reads there). The default is FormatOCI. Lowers are read
// in whichever format they hold, whatever this option says.
func WithFormat(f Format) Option {
	return func(c *config) { c.format = f }
}

// WithUserXattr makes kernel-format markers use the user.overlay.* xattrs
// instead of trusted.overlay.*, as the kernel's userxattr mount option
// does. It needs no privilege.
func WithUserXattr() Option {
	return func(c *config) { c.userXattr = true }
}

// WithVolatile skips the fsync that makes a copied-up file's bytes durable
// before the copy takes the lower file's place, as the kernel's volatile
// mount option does. Copy-up on a disk upper is then as fast as a plain
// copy, but after a power loss or an operating-system crash (not a crash
// of the process) a copied-up file may show up empty or partly written.
// Layers whose files do nothing on Sync, such as MemMapFs, gain nothing.
func WithVolatile() Option {
	return func(c *config) { c.volatile = true }
}

// New returns an Overlay of upper over lowers. lowers[0] is the topmost
// lower layer, as in the kernel's lowerdir=l1:l2:l3. A nil upper gives a
// read-only overlay whose writes fail with EROFS. Lowers are never written.
//
// Each layer is addressed the way it expects: names are passed rooted
// ("/a/b"), as afero's MemMapFs keys them, unless the layer accepts only
// unrooted ones (io/fs-based layers). So a MemMapFs upper holds "/etc/motd",
// and a lower MemMapFs must have been written with rooted names.
//
// New prepares the work directory ".wh..wh.work" in the upper and removes
// whatever an earlier, interrupted operation left in it. A kernel-format
// upper holds it only while a call uses it.
func New(upper afero.Fs, lowers []afero.Fs, opts ...Option) (*Overlay, error) {
	var cfg config
	for _, opt := range opts {
		opt(&cfg)
	}
	if len(lowers) == 0 && upper == nil {
		return nil, errors.New("overlay: no layers")
	}
	o := &Overlay{layers: make([]layer, 0, len(lowers)+1), cfg: cfg}
	up, err := cfg.upperLayer(upper)
	if err != nil {
		return nil, err
	}
	o.layers = append(o.layers, up)
	for i, l := range lowers {
		if l == nil {
			return nil, fmt.Errorf("overlay: lower layer %d is nil", i)
		}
		o.layers = append(o.layers, cfg.lowerLayer(l))
	}
	if upper != nil {
		o.work.tidy = up.noOCI
		if err := o.prepareWorkDir(); err != nil {
			return nil, pathErr("new", workDir, err)
		}
		o.layers[0].exactPerms = probeExactPerms(o.layers[0], o.tmpName())
		err := o.probeXattrs()
		o.tidyWork()
		if err != nil {
			return nil, err
		}
		info, err := o.layers[0].lstat(".")
		if err != nil {
			return nil, pathErr("new", ".", err)
		}
		o.autoDirTimes = isHostInfo(info)
	}
	dirs, err := o.findRootDirs()
	if err != nil {
		return nil, pathErr("new", ".", err)
	}
	o.rootDirs = dirs
	o.lookups.follows(o.layers[0])
	o.listings.follows(o.layers[0])
	return o, nil
}

// Name returns the name of this file system, "Overlay".
func (o *Overlay) Name() string { return "Overlay" }

// Create creates or truncates the named file, as OpenFile with
// O_RDWR|O_CREATE|O_TRUNC and mode 0666 does.
func (o *Overlay) Create(name string) (afero.File, error) {
	defer o.use().done()
	defer o.beginChange().endChange()
	return o.open(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
}

// Open opens the named file or directory for reading.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) Open(name string) (afero.File, error) {
	defer o.use().done()
	return o.open(name, os.O_RDONLY, 0)
}

// OpenFile opens the named file with the given flags, as os.OpenFile does on
// a kernel overlay mount. Write intent (O_WRONLY, O_RDWR or O_TRUNC) on a
// lower file copies it up first; O_TRUNC skips copying the data it discards.
// A new file gets exactly perm: no umask is applied.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) OpenFile(name string, flag int, perm os.FileMode) (afero.File, error) {
	defer o.use().done()
	if flag&(os.O_WRONLY|os.O_RDWR|os.O_CREATE|os.O_TRUNC) != 0 {
		defer o.beginChange().endChange()
	}
	return o.open(name, flag, perm)
}

// open cleans name and opens it for Open, OpenFile and Create.
func (o *Overlay) open(name string, flag int, perm os.FileMode) (afero.File, error) {
	clean, err := cleanName(name)
	if err == nil {
		var f afero.File
		if f, err = o.openFile(name, clean, flag, perm); err == nil {
			return f, nil
		}
	}
	return nil, pathErr("open", name, err)
}

// Stat returns the FileInfo of the named file, following symlinks. For a
// merged directory it describes the topmost copy.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) Stat(name string) (os.FileInfo, error) {
	fi, err := o.statName(name, true)
	if err != nil {
		return nil, pathErr("stat", name, err)
	}
	return fi, nil
}

// LstatIfPossible returns the FileInfo of the named file without following a
// final symlink. The boolean is always true: the overlay resolves symlinks
// itself, whatever its layers support.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) LstatIfPossible(name string) (os.FileInfo, bool, error) {
	fi, err := o.statName(name, false)
	if err != nil {
		return nil, true, pathErr("lstat", name, err)
	}
	return fi, true, nil
}

// Mkdir creates the directory name with exactly the permission bits perm.
// A directory created where a lower one was deleted is opaque.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) Mkdir(name string, perm os.FileMode) error {
	defer o.use().done()
	defer o.beginChange().endChange()
	clean, err := cleanName(name)
	if err == nil {
		err = o.mkdir(clean, perm)
	}
	if err != nil {
		return pathErr("mkdir", name, err)
	}
	return nil
}

// MkdirAll creates the directory name and any missing parents with the
// permission bits perm. It does nothing if name is already a directory.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) MkdirAll(name string, perm os.FileMode) error {
	defer o.use().done()
	defer o.beginChange().endChange()
	clean, err := cleanName(name)
	if err == nil {
		err = o.mkdirAll(clean, perm)
	}
	if err != nil {
		return pathErr("mkdir", name, err)
	}
	return nil
}

// Remove removes the named file or empty directory. A name that a lower
// layer holds is hidden by a whiteout in the upper.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) Remove(name string) error {
	defer o.use().done()
	defer o.beginChange().endChange()
	clean, err := cleanName(name)
	if err == nil {
		err = o.remove(clean)
	}
	if err != nil {
		return pathErr("remove", name, err)
	}
	return nil
}

// RemoveAll removes name and everything it contains, in every layer's view.
// It returns nil if name does not exist (on a read-only overlay: EROFS, as
// os.RemoveAll gives on a read-only mount, unless a directory on the way is
// missing too).
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) RemoveAll(name string) error {
	defer o.use().done()
	defer o.beginChange().endChange()
	clean, err := cleanName(name)
	if err == nil {
		err = o.removeAll(clean)
	}
	if err != nil {
		return pathErr("RemoveAll", name, err)
	}
	return nil
}

// Rename renames oldname to newname, as os.Rename does on a kernel overlay
// mount with redirect_dir=on: files and directories move across layers, a
// file replaces an existing file, and an existing directory at newname is
// EEXIST. If there is an error, it will be of type [*os.LinkError].
func (o *Overlay) Rename(oldname, newname string) error {
	defer o.use().done()
	defer o.beginChange().endChange()
	oldClean, err := cleanName(oldname)
	if err == nil {
		var newClean string
		if newClean, err = cleanName(newname); err == nil {
			err = o.rename(oldClean, newClean)
		}
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: errnoOf(err)}
	}
	return nil
}

// Chmod changes the mode of the named file, following symlinks, copying it
// up first if a lower layer holds it.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) Chmod(name string, mode os.FileMode) error {
	return o.setAttr("chmod", name, func(up afero.Fs, p string) error {
		return up.Chmod(p, mode)
	})
}

// Chown changes the numeric uid and gid of the named file, following
// symlinks, copying it up first if a lower layer holds it.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) Chown(name string, uid, gid int) error {
	return o.setAttr("chown", name, func(up afero.Fs, p string) error {
		if err := up.Chown(p, uid, gid); err != nil || o.layers[0].isHost() {
			return err // a host's chown has cleared what Linux clears
		}
		return dropSetIDOnChown(up, p)
	})
}

// dropSetIDOnChown clears what Linux's chown clears on a file that is not a
// directory, whoever calls it: the set-user-ID bit, and the set-group-ID bit
// where the group may execute, for an upper that is not a host directory
// (MemMapFs's chown clears nothing).
func dropSetIDOnChown(up afero.Fs, p string) error {
	fi, err := up.Stat(p)
	if err != nil || fi.IsDir() {
		return err
	}
	mode := fi.Mode()
	drop := mode & os.ModeSetuid
	if mode&0o010 != 0 {
		drop |= mode & os.ModeSetgid
	}
	if drop == 0 {
		return nil
	}
	return up.Chmod(p, mode&^drop&modeBits)
}

// Chtimes changes the access and modification times of the named file,
// following symlinks, copying it up first if a lower layer holds it. A
// zero time leaves that time unchanged, as with os.Chtimes.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) Chtimes(name string, atime, mtime time.Time) error {
	return o.setAttr("chtimes", name, func(up afero.Fs, p string) error {
		if (atime.IsZero() || mtime.IsZero()) && !o.layers[0].isHost() { // os.Chtimes keeps them itself
			var err error
			if atime, mtime, err = keepZeroTimes(up, p, atime, mtime); err != nil {
				return err
			}
		}
		return up.Chtimes(p, atime, mtime)
	})
}

// keepZeroTimes returns atime and mtime with a zero one replaced by the
// time the upper file p has now: os.Chtimes leaves a time given as zero
// unchanged, where MemMapFs would set it to year 1.
func keepZeroTimes(up afero.Fs, p string, atime, mtime time.Time) (time.Time, time.Time, error) {
	fi, err := up.Stat(p)
	if err != nil {
		return atime, mtime, err
	}
	if atime.IsZero() {
		atime = fileAtime(fi)
	}
	if mtime.IsZero() {
		mtime = fi.ModTime()
	}
	return atime, mtime, nil
}

// SymlinkIfPossible creates newname as a symbolic link to oldname. The
// target is stored as given. It needs an upper layer that supports symlinks.
// If there is an error, it will be of type [*os.LinkError].
func (o *Overlay) SymlinkIfPossible(oldname, newname string) error {
	defer o.use().done()
	defer o.beginChange().endChange()
	clean, err := cleanName(newname)
	if err == nil {
		err = o.symlink(oldname, clean)
	}
	if err != nil {
		return &os.LinkError{Op: "symlink", Old: oldname, New: newname, Err: errnoOf(err)}
	}
	return nil
}

// ReadlinkIfPossible returns the target of the named symbolic link.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) ReadlinkIfPossible(name string) (string, error) {
	defer o.use().done()
	clean, err := cleanName(name)
	if err == nil {
		var target string
		if target, err = o.readlink(clean); err == nil {
			return target, nil
		}
	}
	return "", pathErr("readlink", name, err)
}

// use marks a call in progress until done: Commit and Reset wait for it.
// Callers write defer o.use().done().
func (o *Overlay) use() *Overlay {
	o.ops.RLock()
	o.callStarted()
	return o
}

// done ends the call that use began.
func (o *Overlay) done() {
	o.callEnded()
	o.ops.RUnlock()
}

// holdStack holds Commit and Reset off while a handle changes its file, so
// that a Commit moves a handle open for writing between its writes, never
// during one. Callers write defer o.holdStack().releaseStack().
func (o *Overlay) holdStack() *Overlay {
	o.ops.RLock()
	return o
}

// releaseStack ends what holdStack began.
func (o *Overlay) releaseStack() { o.ops.RUnlock() }

// cleanName turns a caller's name into the overlay's form: cleaned and
// unrooted, "." for the root. It rejects names the kernel rejects (a NUL
// byte, a component over 255 bytes) and the reserved ".wh." names.
func cleanName(name string) (string, error) {
	if clean := strings.TrimPrefix(name, "/"); isCleanName(clean) {
		return clean, nil
	}
	return cleanSlowly(name)
}

// cleanSlowly is cleanName for a name that is not already clean.
func cleanSlowly(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", syscall.EINVAL
	}
	clean := strings.TrimPrefix(name, "/")
	if !fs.ValidPath(clean) { // the common, clean case needs no allocation
		clean = path.Clean("/" + name)[1:]
	}
	if clean == "" || clean == "." {
		return ".", nil
	}
	for c := range strings.SplitSeq(clean, "/") {
		if len(c) > maxNameLen {
			return "", syscall.ENAMETOOLONG
		}
		if isReserved(c) {
			return "", syscall.EINVAL
		}
	}
	return clean, nil
}

// isCleanName reports whether name is already in the overlay's form and
// acceptable as it is: the common case, checked in one pass. Every other
// name takes cleanName's longer way, which also says what is wrong.
func isCleanName(name string) bool {
	start := 0
	for i := 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '/' {
			if name[i] == 0 {
				return false
			}
			continue
		}
		c := name[start:i]
		if c == "" || c == "." || c == ".." || len(c) > maxNameLen || isReserved(c) {
			return false
		}
		start = i + 1
	}
	return true
}

// maxNameLen is the longest file name component Linux accepts.
const maxNameLen = 255

// pathErr labels err with the caller's operation and name, keeping only the
// underlying cause so that no layer's host path leaks.
func pathErr(op, name string, err error) error {
	return &fs.PathError{Op: op, Path: name, Err: errnoOf(err)}
}

// errnoOf strips the path labels a layer put on err and maps afero's plain
// sentinel errors to the errnos the kernel would return; errNoSymlink is
// kept whole. It walks the chain by hand: errors.As would move its targets
// to the heap on every call.
func errnoOf(err error) error {
	for e := err; e != nil; {
		switch t := e.(type) {
		case syscall.Errno:
			return t
		case noSymlinkError:
			return t // an EPERM that also matches afero.ErrNoSymlink
		case *fs.PathError:
			err, e = t.Err, t.Err
			continue
		case *os.LinkError:
			err, e = t.Err, t.Err
			continue
		case *os.SyscallError:
			err, e = t.Err, t.Err
			continue
		}
		e = errors.Unwrap(e)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, fs.ErrExist):
		return syscall.EEXIST
	case errors.Is(err, fs.ErrPermission):
		return syscall.EPERM
	case errors.Is(err, fs.ErrInvalid):
		return syscall.EINVAL
	}
	return err
}
