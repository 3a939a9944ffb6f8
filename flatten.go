package overlay

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/spf13/afero"
)

// Flatten writes the overlay's merged view into dst, squashing the layers
// into one tree: directories, regular files and symlinks (with their
// targets verbatim), each with its mode, modification time and, where the
// layers report one, owner (an owner dst refuses for lack of privilege is
// left as it is). Whiteouts, opaque markers and the work directory are not
// part of the merged view and are not written. The root's mode and times are
// given to dst's root.
//
// dst is meant to be empty; a name it already holds is replaced, except that
// directories merge. A symlink needs a dst that can hold one (a directory on
// disk through afero.NewBasePathFs): elsewhere Flatten fails with an error
// matching afero.ErrNoSymlink. Device files and FIFOs fail with an error
// matching errors.ErrUnsupported. Flatten reads the overlay as any caller
// does, a name at a time: flatten an overlay that is not being changed.
// If there is an error, it will be of type [*fs.PathError].
func Flatten(dst afero.Fs, o *Overlay) error {
	if dst == nil {
		return &fs.PathError{Op: "flatten", Path: ".", Err: syscall.EINVAL}
	}
	root, _, err := o.LstatIfPossible(".")
	if err != nil {
		return flattenErr(".", err)
	}
	f := flattener{o: o, dst: newLayer(dst)}
	return f.dir(".", root)
}

// flattener carries one Flatten call.
type flattener struct {
	o   *Overlay
	dst layer
}

// flattenErr labels err with the name it happened to.
func flattenErr(name string, err error) error {
	return &fs.PathError{Op: "flatten", Path: name, Err: errnoOf(err)}
}

// dir writes the merged directory p, described by info, and everything in
// it. Its own attributes come last, since adding children changes its times.
func (f *flattener) dir(p string, info fs.FileInfo) error {
	if p != "." {
		exists, err := replaceName(f.dst, p, true)
		if err == nil && !exists {
			err = f.dst.mkdir(p, 0o700)
		}
		if err != nil {
			return flattenErr(p, err)
		}
	}
	list, err := afero.ReadDir(f.o, p)
	if err != nil {
		return flattenErr(p, err)
	}
	for _, fi := range list {
		if err := f.entry(join(p, fi.Name()), fi); err != nil {
			return err
		}
	}
	if err := setAttrs(f.dst, p, info); err != nil {
		return flattenErr(p, err)
	}
	return nil
}

// entry writes the merged name p, described by info.
func (f *flattener) entry(p string, info fs.FileInfo) error {
	var err error
	switch mode := info.Mode(); {
	case mode.IsDir():
		return f.dir(p, info)
	case mode&fs.ModeSymlink != 0:
		err = f.symlink(p)
	case mode.IsRegular():
		err = f.file(p)
	default:
		err = unsupported("device files and FIFOs cannot be created through afero")
	}
	if err == nil {
		err = setAttrs(f.dst, p, info)
	}
	if err != nil {
		return flattenErr(p, err)
	}
	return nil
}

// symlink writes the symlink p of the merged view.
func (f *flattener) symlink(p string) error {
	target, err := f.o.ReadlinkIfPossible(p)
	if err != nil {
		return err
	}
	if _, err := replaceName(f.dst, p, false); err != nil {
		return err
	}
	err = f.dst.symlink(target, p)
	if errors.Is(err, afero.ErrNoSymlink) {
		return errNoSymlinkDst
	}
	return err
}

// file copies the regular file p of the merged view, streaming it.
func (f *flattener) file(p string) error {
	src, err := f.o.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer src.Close() // best effort: the source was only read
	if _, err := replaceName(f.dst, p, false); err != nil {
		return err
	}
	dst, err := f.dst.open(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

// replaceName prepares name in l for a new entry: an existing directory is
// kept when dir is set (exists is then true); anything else there is removed,
// never followed.
func replaceName(l layer, name string, dir bool) (exists bool, err error) {
	fi, err := l.lstat(name)
	switch {
	case err != nil && isNotExist(err):
		return false, nil
	case err != nil:
		return false, err
	case dir && fi.IsDir():
		return true, nil
	}
	return false, l.removeAll(name)
}

// setAttrs gives name in l the owner, permission bits and times that info
// describes. Owners come from the host's stat or a tar header.
func setAttrs(l layer, name string, info fs.FileInfo) error {
	if err := setOwner(l, name, info); err != nil {
		return err
	}
	if info.Mode()&fs.ModeSymlink == 0 {
		if err := l.fs.Chmod(l.path(name), info.Mode()&modeBits); err != nil {
			return err
		}
	}
	return l.setTimes(name, info)
}

// setOwner gives name in l the owner that info reports, if it reports one.
// A refusal for lack of privilege is ignored, as tar does for a user other
// than root.
func setOwner(l layer, name string, info fs.FileInfo) error {
	uid, gid, ok := ownerOf(info)
	if !ok {
		return nil
	}
	err := l.chown(name, uid, gid, info.Mode()&fs.ModeSymlink != 0)
	if err != nil && errors.Is(err, fs.ErrPermission) {
		return nil
	}
	return err
}
