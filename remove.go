package overlay

import (
	"errors"
	"syscall"
)

// remove is Remove's worker. The root is busy. As on Linux, a read-only
// overlay refuses (EROFS) once the directories on the way are found, before
// it looks at the name itself.
func (o *Overlay) remove(name string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, err := o.walk(name, false)
	switch {
	case err != nil:
		return err
	case r.found && r.isRoot():
		return syscall.EBUSY
	case o.readOnly():
		return syscall.EROFS
	case !r.found:
		return syscall.ENOENT
	case r.isDir():
		list, err := o.readMerged(r.entry)
		if err != nil {
			return err
		}
		if len(list) > 0 {
			return syscall.ENOTEMPTY
		}
	}
	return o.removeEntry(r)
}

// removeAll is RemoveAll's worker. Like os.RemoveAll on a mount point, for
// the root it removes everything inside and then reports the root busy. A
// name under a missing directory is already gone, even on a read-only
// overlay; there any other name, even a missing one, is refused, as
// os.RemoveAll on a read-only mount is.
func (o *Overlay) removeAll(name string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, err := o.walk(name, false)
	switch {
	case err != nil && errors.Is(err, syscall.ENOENT):
		return nil
	case err != nil:
		return err
	case o.readOnly():
		return o.refuseRemoveAll(r)
	case !r.found:
		return nil
	case r.isRoot():
		return o.emptyRoot(r.entry)
	}
	return o.removeEntry(r)
}

// refuseRemoveAll is what os.RemoveAll gets on a read-only mount for the
// name r: EROFS, but EBUSY for an empty root, which it tries to remove
// itself (it first tries to remove what a root holds). The caller holds
// o.mu.
func (o *Overlay) refuseRemoveAll(r resolved) error {
	if !r.found || !r.isRoot() {
		return syscall.EROFS
	}
	list, err := o.readMerged(r.entry)
	switch {
	case err != nil:
		return err
	case len(list) > 0:
		return syscall.EROFS
	}
	return syscall.EBUSY
}

// emptyRoot removes every name in the root directory root and returns EBUSY.
// The caller holds o.mu for writing.
func (o *Overlay) emptyRoot(root entry) error {
	list, err := o.readMerged(root)
	if err != nil {
		return err
	}
	for _, fi := range list {
		c, err := o.walk(fi.Name(), false)
		if err != nil {
			return err
		}
		if c.found {
			if err := o.removeEntry(c); err != nil {
				return err
			}
		}
	}
	return syscall.EBUSY
}

// removeEntry removes the entry r, and whatever it contains, from the merged
// view. A name that a lower layer would show gets a whiteout first, so no
// step shows the lower copy. The caller holds o.mu for writing.
func (o *Overlay) removeEntry(r resolved) error {
	o.keepDirHandles(r.path)
	lower, err := o.inLowers(r.parent, r.base)
	if err != nil {
		return err
	}
	up := o.layers[0]
	replaced := lower && up.noOCI && r.inUpper() // the whiteout takes the entry's own name
	switch {
	case replaced:
		if err := o.whiteOutUpper(r.path); err != nil {
			return err
		}
	case lower:
		if err := o.ensureUpperParent(r); err != nil {
			return err
		}
		if err := up.addWhiteout(r.path); err != nil {
			return err
		}
	}
	if r.inUpper() && !replaced {
		if err := o.removeUpper(r.path, r.isDir()); err != nil {
			return err
		}
	}
	o.handles.removed(r.path)
	return o.touchDir(r.parent.path)
}

// removeUpper deletes name from the upper. A directory, which may still hold
// markers and more, is first renamed into the work directory so that it
// vanishes in one step. The caller holds o.mu for writing.
func (o *Overlay) removeUpper(name string, dir bool) error {
	up := o.layers[0]
	if !dir {
		return up.remove(name)
	}
	tmp := o.tmpName()
	if err := up.rename(name, tmp); err != nil {
		return err
	}
	o.discard(tmp)
	return nil
}
