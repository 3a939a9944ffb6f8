package overlay

import "syscall"

// rename is Rename's worker. A lower file is copied up first, outside the
// lock; then the checks run again and the move happens under it.
func (o *Overlay) rename(oldName, newName string) error {
	if o.readOnly() {
		return syscall.EROFS
	}
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
	case src.path == join(dst.parent.path, dst.base):
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
	case !src.found:
		return src, dst, syscall.ENOENT
	case src.isRoot():
		return src, dst, syscall.EXDEV
	case src.isDir() && under(join(dst.parent.path, dst.base), src.path):
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
	to := join(dst.parent.path, dst.base)
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
	case src.isDir() && !upperOnly(src.entry):
		err = o.moveMerged(src, to, lowerOld)
	case src.isDir():
		err = o.moveUpperDir(src, dst, to, lowerOld)
	default:
		err = o.moveUpper(src.path, to, lowerOld)
	}
	if err != nil {
		return err
	}
	o.handles.renamed(src.path, to)
	if err := o.entryAdded(to); err != nil {
		return err
	}
	return o.touchDir(src.parent.path)
}

// upperOnly reports whether only the upper contributes to the directory e.
func upperOnly(e entry) bool {
	return len(e.dirs) == 1 && e.dirs[0] == 0
}

// moveUpper renames the upper name from to to, first whiting out from if a
// lower layer would show it afterwards.
func (o *Overlay) moveUpper(from, to string, lowerOld bool) error {
	up := o.layers[0]
	if lowerOld {
		if err := up.addWhiteout(from); err != nil {
			return err
		}
	}
	return up.fs.Rename(up.path(from), up.path(to))
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
			err = up.markOpaque(src.path)
		}
		if err != nil {
			return err
		}
	}
	return o.moveUpper(src.path, to, lowerOld)
}

// moveMerged renames a directory that lower layers contribute to. The OCI
// format has no redirects, so the merged directory is built anew in the
// work directory as an opaque directory, moving the upper's files and
// copying the lowers' ones, and renamed to its new name.
func (o *Overlay) moveMerged(src resolved, to string, lowerOld bool) error {
	tmp := o.tmpName()
	var moved [][2]string
	err := o.buildDir(src.entry, tmp, true, &moved)
	if err == nil && lowerOld {
		err = o.layers[0].addWhiteout(src.path)
	}
	if err == nil {
		err = o.layers[0].fs.Rename(o.layers[0].path(tmp), o.layers[0].path(to))
	}
	if err != nil {
		o.undoMoves(moved)
		o.discard(tmp)
		return err
	}
	if src.inUpper() {
		return o.removeUpper(src.path, true)
	}
	return nil
}

// buildTree recreates the merged entry e at the work-directory name dst:
// directories with their modes, owners and times; upper files moved
// (recorded in moved); lower files copied.
func (o *Overlay) buildTree(e entry, dst string, moved *[][2]string) error {
	up := o.layers[0]
	switch {
	case e.isDir():
		return o.buildDir(e, dst, false, moved)
	case e.inUpper():
		if err := up.fs.Rename(up.path(e.path), up.path(dst)); err != nil {
			return err
		}
		*moved = append(*moved, [2]string{e.path, dst})
		return nil
	case e.isSymlink():
		err := o.copySymlink(e, dst)
		if err == nil {
			err = up.copyAttrs(dst, e.info)
		}
		return err
	case e.info.Mode().IsRegular():
		err := o.copyContent(e, dst, true)
		if err == nil {
			err = up.copyAttrs(dst, e.info)
		}
		return err
	}
	return syscall.ENOTSUP
}

// buildDir recreates the merged directory e at dst, opaque if asked, its
// children first and its own attributes last, since adding children changes
// its times.
func (o *Overlay) buildDir(e entry, dst string, opaque bool, moved *[][2]string) error {
	up := o.layers[0]
	if err := up.fs.Mkdir(up.path(dst), 0o700); err != nil {
		return err
	}
	if opaque {
		if err := up.markOpaque(dst); err != nil {
			return err
		}
	}
	list, err := o.readMerged(e)
	if err != nil {
		return err
	}
	for _, fi := range list {
		c, ok, err := o.mergedChild(e, join(e.path, fi.Name()))
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if err := o.buildTree(c, join(dst, fi.Name()), moved); err != nil {
			return err
		}
	}
	return up.copyAttrs(dst, e.info)
}

// undoMoves puts the upper files that a failed moveMerged moved back.
func (o *Overlay) undoMoves(moved [][2]string) {
	up := o.layers[0]
	for i := len(moved) - 1; i >= 0; i-- {
		_ = up.fs.Rename(up.path(moved[i][1]), up.path(moved[i][0])) // best effort: nothing better is left to do
	}
}
