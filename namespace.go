package overlay

import (
	"io/fs"
	"os"
	"syscall"

	"github.com/spf13/afero"
)

// mkdir is Mkdir's worker. A directory created over a whiteout is opaque,
// so that the deleted lower directory's contents stay hidden.
func (o *Overlay) mkdir(name string, perm os.FileMode) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, err := o.walkNew(name)
	if err != nil {
		return err
	}
	perm &= dirModeBits
	pinfo, err := o.infoOf(r.parent)
	if err != nil {
		return err
	}
	if pinfo.Mode()&fs.ModeSetgid != 0 {
		perm |= fs.ModeSetgid // inherited, as Linux does
	}
	if err := o.ensureUpperParent(r); err != nil {
		return err
	}
	p := r.path
	if r.whiteout {
		err = o.mkdirOpaque(p, perm)
	} else {
		err = o.mkdirPlain(p, perm)
	}
	if err != nil {
		return err
	}
	return o.entryAdded(p, r)
}

// dirModeBits are the bits of a mode that mkdir(2) takes: setuid and setgid
// are ignored for directories (setgid is inherited from the parent instead).
const dirModeBits = fs.ModePerm | fs.ModeSticky

// walkNew resolves a name about to be created: it must not exist (EEXIST),
// and the overlay must be writable (EROFS), in that order, as on Linux.
// The caller holds o.mu for writing.
func (o *Overlay) walkNew(name string) (resolved, error) {
	r, err := o.walk(name, false)
	switch {
	case err != nil:
		return r, err
	case r.found:
		return r, syscall.EEXIST
	case o.readOnly():
		return r, syscall.EROFS
	}
	return r, nil
}

// mkdirPlain creates the directory p in the upper with exactly perm.
func (o *Overlay) mkdirPlain(p string, perm os.FileMode) error {
	up := o.layers[0]
	if err := up.mkdir(p, perm&fs.ModePerm); err != nil {
		return err
	}
	if up.exactPerms && perm&modeBits == perm&fs.ModePerm {
		return nil // mkdir gave it all
	}
	return up.chmodExactly(p, perm)
}

// mkdirOpaque builds an opaque directory in the work directory and renames
// it to p, so that it never shows without its marker.
func (o *Overlay) mkdirOpaque(p string, perm os.FileMode) error {
	up := o.layers[0]
	tmp := o.tmpName()
	err := up.mkdir(tmp, 0o700)
	if err == nil {
		err = up.markOpaque(tmp)
	}
	if err == nil {
		err = o.takeParentGroup(tmp, p, false)
	}
	if err == nil {
		err = up.fs.Chmod(up.path(tmp), perm&modeBits)
	}
	switch {
	case err == nil && up.noOCI:
		err = o.placeOverDevice(tmp, p, true)
	case err == nil:
		err = up.rename(tmp, p)
	}
	if err != nil {
		o.discard(tmp)
	}
	return err
}

// chmodExactly gives name exactly the mode bits of perm, where the layer
// applied a umask on creation.
func (l layer) chmodExactly(name string, perm os.FileMode) error {
	fi, err := l.lstat(name)
	if err != nil || fi.Mode()&modeBits == perm&modeBits {
		return err
	}
	return l.fs.Chmod(l.path(name), perm&modeBits)
}

// probeExactPerms reports whether the upper l creates files and
// directories with exactly the mode asked, so that creating one needs no
// check for a umask: it creates a file and a directory with every mode bit
// at tmp, in the work directory, and looks. A directory on the host applies
// the process's umask, which may change at any time, so it is never taken
// to be exact.
func probeExactPerms(l layer, tmp string) bool {
	if l.isHost() {
		return false
	}
	defer func() { _ = l.removeAll(tmp) }() // best effort: New clears the work directory too
	if err := l.mkdir(tmp, 0o777); err != nil {
		return false
	}
	dir, err := l.lstat(tmp)
	if err != nil || dir.Mode()&modeBits != 0o777 {
		return false
	}
	const all = modeBits
	f, err := l.open(tmp+"/f", os.O_WRONLY|os.O_CREATE|os.O_EXCL, all)
	if err != nil {
		return false
	}
	file, err := f.Stat()
	_ = f.Close() // best effort: only the mode was wanted
	return err == nil && file.Mode()&modeBits == all
}

// mkdirAll is MkdirAll's worker, as os.MkdirAll: parents first, and an
// existing directory is success.
func (o *Overlay) mkdirAll(name string, perm os.FileMode) error {
	if fi, err := o.statName(name, true); err == nil {
		if fi.IsDir() {
			return nil
		}
		return syscall.ENOTDIR
	}
	if parent := parentOf(name); parent != "." {
		if err := o.mkdirAll(parent, perm); err != nil {
			return err
		}
	}
	err := o.mkdir(name, perm)
	if err != nil {
		if fi, serr := o.statName(name, false); serr == nil && fi.IsDir() {
			return nil
		}
	}
	return err
}

// symlink is SymlinkIfPossible's worker.
func (o *Overlay) symlink(target, name string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, err := o.walkNew(name)
	switch {
	case err != nil:
		return err
	case target == "":
		return syscall.ENOENT
	}
	if err := o.ensureUpperParent(r); err != nil {
		return err
	}
	p := r.path
	up := o.layers[0]
	if !o.overDevice(r) {
		if err := up.symlink(target, p); err != nil {
			return err
		}
		return o.entryAdded(p, r)
	}
	tmp := o.tmpName()
	err = up.symlink(target, tmp)
	if err == nil {
		err = o.takeParentGroup(tmp, p, true)
	}
	if err == nil {
		err = o.placeOverDevice(tmp, p, false)
	}
	if err != nil {
		o.discard(tmp)
		return err
	}
	return o.entryAdded(p, r)
}

// readlink is ReadlinkIfPossible's worker.
func (o *Overlay) readlink(name string) (string, error) {
	e, err := o.lookup(name, false)
	switch {
	case err != nil:
		return "", err
	case !e.isSymlink():
		return "", syscall.EINVAL
	}
	return o.layers[e.layer].readlink(e.src())
}

// setAttr runs set on the upper copy of name, copying name up first. It is
// the worker of Chmod, Chown and Chtimes, which follow symlinks and copy up
// even when they change nothing, as the kernel does.
func (o *Overlay) setAttr(op, name string, set func(up afero.Fs, p string) error) error {
	defer o.use().done()
	defer o.beginChange().endChange()
	clean, err := cleanName(name)
	for range maxRetries {
		if err != nil {
			break
		}
		var e entry
		if e, err = o.lookup(clean, true); err != nil {
			break
		}
		if o.readOnly() {
			err = syscall.EROFS
			break
		}
		if !e.isDir() && !e.inUpper() {
			err = o.copyUp(e, true)
			continue
		}
		if err = o.setUpperAttr(clean, set); err != errStale {
			break
		}
		err = nil
	}
	if err != nil {
		return pathErr(op, name, err)
	}
	return nil
}

// setUpperAttr runs set on the upper copy of name, copying up a directory
// (without its contents) if need be. It returns errStale if a file is no
// longer in the upper.
func (o *Overlay) setUpperAttr(name string, set func(up afero.Fs, p string) error) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	e, err := o.walk(name, true)
	switch {
	case err != nil:
		return err
	case !e.found:
		return syscall.ENOENT
	case e.isDir():
		if err := o.ensureUpperDir(e.path); err != nil {
			return err
		}
	case !e.inUpper():
		return errStale
	}
	up := o.layers[0]
	return set(up.fs, up.path(e.path))
}
