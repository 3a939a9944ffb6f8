package overlay

import "syscall"

// rename is Rename's worker. A lower file is copied up first, outside the
// lock; then the checks run again and the move happens under it.
func (o *Overlay) rename(oldName, newName string) error {
	for range maxRetries {
		src, err := o.renameLocked(oldName, newName)
		if err != errNeedCopyUp {
			return err
		}
		if err := o.copyUp(src, true); err != nil {
			return err
		}
	}
	return syscall.EAGAIN
}

// errNeedCopyUp tells rename to copy the source up and try again.
var errNeedCopyUp = sentinel("overlay: rename needs a copy-up")

// renameLocked checks a rename and, if the source is in the upper or is a
// directory, carries it out. For a lower file it returns the source and
// errNeedCopyUp.
func (o *Overlay) renameLocked(oldName, newName string) (entry, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	src, dst, err := o.renameCheck(oldName, newName)
	switch {
	case err != nil:
		return entry{}, err
	case src.path == dst.path:
		return entry{}, nil // the same file: nothing to do
	case !src.isDir() && !src.inUpper():
		return src.entry, errNeedCopyUp
	}
	return entry{}, o.move(src, dst)
}

// renameCheck resolves both names and returns the error os.Rename gives on
// a kernel mount, in the kernel's order. os.Rename itself refuses an
// existing directory as the new name with EEXIST. The caller holds o.mu.
func (o *Overlay) renameCheck(oldName, newName string) (src, dst resolved, err error) {
	src, serr := o.walk(oldName, false)
	dst, derr := o.walk(newName, false)
	if derr == nil && dst.found && dst.isDir() {
		switch {
		case serr != nil:
			return src, dst, serr
		case !src.found:
			return src, dst, syscall.ENOENT
		}
		return src, dst, syscall.EEXIST
	}
	switch {
	case serr != nil:
		return src, dst, serr
	case derr != nil:
		return src, dst, derr
	case src.found && src.isRoot():
		return src, dst, syscall.EXDEV
	case o.readOnly():
		return src, dst, syscall.EROFS // checked before the names themselves
	case !src.found:
		return src, dst, syscall.ENOENT
	case src.isDir() && under(dst.path, src.path):
		return src, dst, syscall.EINVAL
	case src.isDir() && dst.found:
		return src, dst, syscall.ENOTDIR
	}
	return src, dst, nil
}

// move renames src to the name dst, which is absent or a non-directory,
// once any lower file at src is copied up. The caller holds o.mu.
func (o *Overlay) move(src, dst resolved) error {
	if err := o.ensureUpperDir(dst.parent.path); err != nil {
		return err
	}
	to := dst.path
	lowerOld, err := o.inLowers(src.parent, src.base)
	if err != nil {
		return err
	}
	if lowerOld { // the old name needs a whiteout, so a parent to hold it
		if err := o.ensureUpperDir(src.parent.path); err != nil {
			return err
		}
	}
	switch {
	case src.isDir() && src.mergesLowers() && o.layers[0].noOCI && !o.cfg.userXattr:
		err = o.moveRedirect(src, dst, to, lowerOld)
	case src.isDir() && src.mergesLowers():
		err = o.moveMerged(src, dst, to, lowerOld)
	case src.isDir():
		err = o.moveUpperDir(src, dst, to, lowerOld)
	default:
		err = o.moveUpper(src, dst, lowerOld)
	}
	if err != nil {
		return err
	}
	o.handles.renamed(src.path, to)
	if err := o.entryAdded(to, dst); err != nil {
		return err
	}
	return o.touchDir(src.parent.path)
}

// moveUpper renames the upper entry src to dst's name, first whiting out
// src's name if a lower layer would show it afterwards. Over a whiteout
// device (kernel format), a non-directory replaces it in the rename, and a
// directory is exchanged with it: the device then whites out the old name,
// or is removed if nothing needs whiting out there.
func (o *Overlay) moveUpper(src, dst resolved, lowerOld bool) error {
	up := o.layers[0]
	from, to := src.path, dst.path
	switch {
	case o.overDevice(dst) && src.isDir():
		if err := up.exchange(from, to); err != nil || lowerOld {
			return err
		}
		return up.dropWhiteout(from)
	case lowerOld && up.noOCI:
		return up.renameWhiteout(from, to)
	}
	if lowerOld {
		if err := up.addWhiteout(from); err != nil {
			return err
		}
	}
	return up.rename(from, to)
}

// moveUpperDir renames a directory that only the upper holds. If a lower
// layer has a directory at the new name, the moved one is made opaque first
// so that the lower contents stay hidden there.
func (o *Overlay) moveUpperDir(src, dst resolved, to string, lowerOld bool) error {
	lowerNew, err := o.inLowers(dst.parent, dst.base)
	if err != nil {
		return err
	}
	if lowerNew {
		up := o.layers[0]
		opaque, err := up.isOpaque(src.path)
		if err == nil && !opaque {
			err = o.markOpaqueKeepTimes(src.path)
		}
		if err != nil {
			return err
		}
	}
	return o.moveUpper(src, dst, lowerOld)
}

// moveMerged renames a directory that lower layers contribute to. The OCI
// format has no redirects, so the directory is first copied up whole and
// made opaque, which changes nothing a reader sees, and then renamed in one
// step like a directory only the upper holds. A failure or a crash at any
// point leaves the old name showing what it showed. Files already in the
// upper stay where they are, so their open handles move with them.
func (o *Overlay) moveMerged(src, dst resolved, to string, lowerOld bool) error {
	if err := o.copyUpTree(src.path); err != nil {
		return err
	}
	if err := o.markOpaqueKeepTimes(src.path); err != nil {
		return err
	}
	if err := o.dropIdleWhiteouts(src.path); err != nil {
		return err
	}
	return o.moveUpperDir(src, dst, to, lowerOld)
}

// dropIdleWhiteouts removes the whiteouts under the opaque upper directory
// dir: with no lower beneath it they hide nothing, and a layer unpacked for
// the kernel would show them as broken entries. Directory times are kept.
// The caller holds o.mu for writing.
func (o *Overlay) dropIdleWhiteouts(dir string) error {
	up := o.layers[0]
	info, err := up.lstat(dir)
	if err != nil {
		return err
	}
	atime, mtime := fileAtime(info), info.ModTime() // now: MemMapFs's FileInfo is live
	list, err := up.readDir(dir)
	if err != nil {
		return err
	}
	dropped := false
	for _, fi := range list {
		name := fi.Name()
		if h, ok := hiddenName(name); ok {
			if err := up.dropWhiteout(join(dir, h)); err != nil {
				return err
			}
			dropped = true
		} else if fi.IsDir() && !isReserved(name) {
			if err := o.dropIdleWhiteouts(join(dir, name)); err != nil {
				return err
			}
		}
	}
	if !dropped {
		return nil
	}
	return up.fs.Chtimes(up.path(dir), atime, mtime)
}

// copyUpTree copies up the merged directory dir and everything in it that
// the upper does not hold yet. The caller holds o.mu for writing.
func (o *Overlay) copyUpTree(dir string) error {
	if err := o.ensureUpperDir(dir); err != nil {
		return err
	}
	d, err := o.walk(dir, false)
	if err != nil {
		return err
	}
	list, err := o.readMerged(d.entry)
	if err != nil {
		return err
	}
	for _, fi := range list {
		if err := o.copyUpChild(d.entry, join(dir, fi.Name())); err != nil {
			return err
		}
	}
	return nil
}

// copyUpChild copies up the entry p of the merged directory parent, a whole
// directory tree included. The caller holds o.mu for writing.
func (o *Overlay) copyUpChild(parent entry, p string) error {
	c, ok, err := o.mergedChild(parent, p)
	switch {
	case err != nil || !ok:
		return err
	case c.isDir():
		return o.copyUpTree(p)
	case c.inUpper():
		return nil
	case !c.isSymlink() && !c.info.Mode().IsRegular():
		return syscall.ENOTSUP
	}
	tmp, err := o.copyToWork(c, true)
	if err != nil {
		return err
	}
	return o.installCopy(tmp, p)
}

// markOpaqueKeepTimes makes the upper directory dir opaque without changing
// its times. The caller holds o.mu for writing.
func (o *Overlay) markOpaqueKeepTimes(dir string) error {
	up := o.layers[0]
	info, err := up.lstat(dir)
	if err != nil {
		return err
	}
	atime, mtime := fileAtime(info), info.ModTime() // now: MemMapFs's FileInfo is live
	if err := up.markOpaque(dir); err != nil {
		return err
	}
	return up.fs.Chtimes(up.path(dir), atime, mtime)
}
