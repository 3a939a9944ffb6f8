package overlay

import (
	"io/fs"
	"os"
	"slices"
	"syscall"

	"github.com/spf13/afero"
)

// Commit freezes the changes made so far, as docker commit does: the current
// upper layer becomes the topmost lower layer, and writing goes on in
// newUpper, which must be empty. The merged view does not change. The old
// upper's work directory is removed first, so the new lower is a clean image
// layer; from then on the overlay never writes to it.
//
// Commit waits for the calls in progress and holds new ones off while it
// swaps the layers, so every call sees the stack before or after, never in
// between. Handles opened before Commit keep working after it. A read-only
// handle reads what it would have read without the Commit: a change made
// after it copies the file up from the committed layer, and the handle
// follows the copy, as one on any lower file does. A file that a handle has
// open to change (for writing, or with O_TRUNC) is copied up into newUpper
// by the Commit itself, and the handle goes on at the same offset in that
// copy: what it writes afterwards shows in the merged view and not in the
// committed layer, which never changes again. Handle writes in progress
// finish first.
// If there is an error, it will be of type [*fs.PathError]: EROFS for a
// read-only overlay, EINVAL for a nil newUpper, ENOTEMPTY for one that
// holds anything.
func (o *Overlay) Commit(newUpper afero.Fs) error {
	if err := o.commit(newUpper); err != nil {
		return pathErr("commit", ".", err)
	}
	return nil
}

// commit is Commit's worker.
func (o *Overlay) commit(newUpper afero.Fs) error {
	if newUpper == nil {
		return syscall.EINVAL
	}
	fresh, err := o.cfg.upperLayer(newUpper)
	if err != nil {
		return err
	}
	info, err := fresh.lstat(".")
	if err != nil {
		return err
	}
	o.ops.Lock() // waits for the calls and handle writes in progress
	defer o.ops.Unlock()
	moves, err := o.commitLocked(fresh, info)
	for _, m := range moves {
		m.f.moveTo(m.copy) // outside o.mu: a handle's lock comes first
	}
	return err
}

// commitLocked swaps the layers for commit and copies up the files that
// handles have open to change, returning those handles' moves. The caller
// holds o.ops for writing.
func (o *Overlay) commitLocked(fresh layer, info fs.FileInfo) ([]writerMove, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.readOnly() {
		return nil, syscall.EROFS
	}
	if err := checkEmpty(fresh); err != nil {
		return nil, err
	}
	if err := setWorkDir(fresh, !o.work.tidy); err != nil {
		return nil, err
	}
	fresh.exactPerms = probeExactPerms(fresh, o.tmpName())
	old := o.layers[0]
	if err := setWorkDir(old, false); err != nil {
		_ = setWorkDir(fresh, false) // best effort: the fresh upper is left as it came
		return nil, err
	}
	o.swapUpper(fresh, isHostInfo(info))
	o.handles.committed()
	o.work.exists = false // the fresh upper has none until a call needs it
	return o.copyUpWriters(), nil
}

// writerMove is a handle open to change its file, and the copy of that file
// in the new upper that it goes on with.
type writerMove struct {
	f    *file
	copy afero.File
}

// copyUpWriters copies up every file that a handle has open to change, now
// in the committed layer, and opens the copy for each such handle, so that
// what the handles write after a Commit goes where the merged view shows
// it. A file that cannot be copied up, or a copy that cannot be opened,
// leaves its handle with the committed file. The caller holds o.mu for
// writing.
func (o *Overlay) copyUpWriters() []writerMove {
	var moves []writerMove
	for _, w := range o.handles.liveWriters() {
		c, err := o.copyUpForWriter(w.name, w.f.flag)
		if err != nil {
			continue
		}
		o.handles.movedUp(&w.f.own)
		moves = append(moves, writerMove{w.f, c})
	}
	return moves
}

// copyUpForWriter copies the committed file name up, unless another handle
// on it had it copied already, and opens the copy as a handle opened with
// flag opens its upper file. Read-only handles on the file follow the
// copy, as after any copy-up. The caller holds o.mu for writing.
func (o *Overlay) copyUpForWriter(name string, flag int) (afero.File, error) {
	r, err := o.walk(name, false)
	switch {
	case err != nil:
		return nil, err
	case !r.found || r.isDir():
		return nil, syscall.ENOENT
	case !r.inUpper():
		tmp, err := o.copyToWork(r.entry, true)
		if err == nil {
			err = o.installCopy(tmp, name)
		}
		if err != nil {
			return nil, err
		}
	}
	return o.layers[0].open(name, upperFlag(flag)&^os.O_TRUNC, 0)
}

// swapUpper puts fresh on top of the stack, the old upper becoming the
// topmost lower. The caller holds o.mu for writing.
func (o *Overlay) swapUpper(fresh layer, autoDirTimes bool) {
	layers := make([]layer, 0, len(o.layers)+1)
	layers = append(layers, fresh)
	o.layers = append(layers, o.layers...)
	o.layers[1].names = nil // a lower: its names never change again
	if o.autoDirTimes != autoDirTimes {
		o.autoDirTimes = autoDirTimes
	}
	dirs, err := o.findRootDirs()
	if err != nil {
		dirs = []int{0} // the fresh upper's root is a directory; no lower is reached
	}
	o.rootDirs = dirs
	o.resetLowerIndex() // the lowers changed: what the index remembers is stale
}

// checkEmpty fails with ENOTEMPTY unless the root of l holds nothing.
func checkEmpty(l layer) error {
	list, err := l.readDir(".")
	if err != nil {
		return err
	}
	if len(list) > 0 {
		return syscall.ENOTEMPTY
	}
	return nil
}

// setWorkDir creates an empty work directory at the root of l (or, with
// create false, removes it), keeping the times of l's root.
func setWorkDir(l layer, create bool) error {
	root, err := l.lstat(".")
	if err != nil {
		return err
	}
	atime, mtime := fileAtime(root), root.ModTime() // now: MemMapFs's FileInfo is live
	if err := l.removeAll(workDir); err != nil {
		return err
	}
	if create {
		if err := l.mkdir(workDir, 0o700); err != nil {
			return err
		}
	}
	return l.fs.Chtimes(l.path("."), atime, mtime)
}

// Refresh forgets what the overlay remembers of its layers: the index of
// the lowers, the upper's listings and the lookups made. Lowers must not
// change, and the upper must change only through the overlay, while it is
// in use; a caller that changed a layer anyway calls Refresh afterwards,
// and the overlay then shows what the layers hold. Open handles keep what
// they have. Refresh waits for the calls in progress and holds new ones off.
// If there is an error, it will be of type [*fs.PathError].
func (o *Overlay) Refresh() error {
	o.ops.Lock()
	defer o.ops.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	dirs, err := o.findRootDirs()
	if err != nil {
		return pathErr("refresh", ".", err)
	}
	o.rootDirs = dirs
	o.layers[0].names.reset()
	o.resetLowerIndex()
	return nil
}

// Reset discards every change made in the upper layer: afterwards the
// merged view is the lower layers' again. The upper is emptied but for its
// work directory, which stays ready; its root's mtime is updated. Handles
// open on upper files keep reading and writing the discarded files, as
// handles on deleted files do. Reset waits for the calls and handle writes
// in progress and holds new ones off while it empties the upper.
// If there is an error, it will be of type [*fs.PathError]: EROFS for a
// read-only overlay.
func (o *Overlay) Reset() error {
	if err := o.reset(); err != nil {
		return pathErr("reset", ".", err)
	}
	return nil
}

// reset is Reset's worker.
func (o *Overlay) reset() error {
	o.ops.Lock() // waits for the calls in progress
	defer o.ops.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.readOnly() {
		return syscall.EROFS
	}
	up := o.layers[0]
	if ok, err := up.exists(workDir); !o.work.tidy && (err != nil || !ok) {
		if err == nil {
			err = setWorkDir(up, true)
		}
		if err != nil {
			return err
		}
	}
	err := o.emptyUpper()
	o.layers[0].names.reset() // the upper changed wholesale, maybe part-way
	o.handles.discarded()
	if err != nil {
		return err
	}
	dirs, err := o.findRootDirs()
	if err != nil {
		return err
	}
	if !slices.Equal(dirs, o.rootDirs) {
		o.resetLowerIndex() // it started from the old root
	}
	o.rootDirs = dirs
	return nil
}

// emptyUpper removes every name at the upper's root but the work directory.
// The caller holds o.mu for writing.
func (o *Overlay) emptyUpper() error {
	list, err := o.layers[0].readDir(".")
	if err != nil {
		return err
	}
	removed := false
	for _, fi := range list {
		if fi.Name() == workDir {
			continue
		}
		if err := o.removeUpperListed(fi); err != nil {
			return err
		}
		removed = true
	}
	if !removed {
		return nil
	}
	return o.touchDir(".")
}

// removeUpperListed removes the entry fi of the upper's root listing. In a
// kernel-format upper the listing shows the markers in the OCI form (see
// kernelMarkers), so they are removed as what they really are.
func (o *Overlay) removeUpperListed(fi fs.FileInfo) error {
	up := o.layers[0]
	if up.noOCI {
		if h, ok := hiddenName(fi.Name()); ok {
			return up.dropWhiteout(h)
		}
		if fi.Name() == opaqueMarker {
			return up.clearOpaqueXattr(".")
		}
	}
	return o.removeUpper(fi.Name(), fi.IsDir())
}
