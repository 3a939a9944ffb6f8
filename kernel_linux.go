package overlay

import (
	"errors"
	"io/fs"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// kernelMarkersSupported reports whether this system has the kernel's
// whiteout devices and overlay xattrs.
const kernelMarkersSupported = true

// isWhiteoutInfo reports whether fi describes a kernel whiteout: a
// character device with device number 0:0.
func isWhiteoutInfo(fi fs.FileInfo) bool {
	if fi.Mode().Type() != fs.ModeDevice|fs.ModeCharDevice {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Rdev == 0
}

// opaqueXattr reports whether the directory dir of the kernel-format layer
// l has the opaque xattr set to "y".
func (l layer) opaqueXattr(dir string) (bool, error) {
	p, err := l.realName(dir)
	if err != nil {
		return false, err
	}
	var buf [8]byte
	n, err := unix.Lgetxattr(p, l.xattrNS+"opaque", buf[:])
	switch {
	case err == nil:
		return n == 1 && buf[0] == 'y', nil
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.ERANGE):
		return false, nil
	}
	return false, &fs.PathError{Op: "getxattr", Path: dir, Err: err}
}

// setOpaqueXattr makes the directory dir of the kernel-format layer l opaque.
func (l layer) setOpaqueXattr(dir string) error {
	p, err := l.realName(dir)
	if err != nil {
		return err
	}
	if err := unix.Lsetxattr(p, l.xattrNS+"opaque", []byte("y"), 0); err != nil {
		return &fs.PathError{Op: "setxattr", Path: dir, Err: err}
	}
	return nil
}

// clearOpaqueXattr removes the opaque xattr of the directory dir of the
// kernel-format layer l, if it has one.
func (l layer) clearOpaqueXattr(dir string) error {
	p, err := l.realName(dir)
	if err != nil {
		return err
	}
	err = unix.Lremovexattr(p, l.xattrNS+"opaque")
	if err != nil && !errors.Is(err, unix.ENODATA) {
		return &fs.PathError{Op: "removexattr", Path: dir, Err: err}
	}
	return nil
}

// mknodWhiteout creates a whiteout device at name in the kernel-format
// layer l.
func (l layer) mknodWhiteout(name string) error {
	p, err := l.realName(name)
	if err != nil {
		return err
	}
	if err := unix.Mknod(p, unix.S_IFCHR, 0); err != nil {
		return &fs.PathError{Op: "mknod", Path: name, Err: err}
	}
	return nil
}

// renameWhiteout renames from to to in the kernel-format layer l and leaves
// a whiteout device at from, in one step (RENAME_WHITEOUT).
func (l layer) renameWhiteout(from, to string) error {
	pf, err := l.realName(from)
	if err != nil {
		return err
	}
	pt, err := l.realName(to)
	if err != nil {
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, pf, unix.AT_FDCWD, pt, unix.RENAME_WHITEOUT); err != nil {
		return &fs.PathError{Op: "rename", Path: from, Err: err}
	}
	return nil
}

// exchange swaps the names a and b in the kernel-format layer l in one
// step (RENAME_EXCHANGE).
func (l layer) exchange(a, b string) error {
	pa, err := l.realName(a)
	if err != nil {
		return err
	}
	pb, err := l.realName(b)
	if err != nil {
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, pa, unix.AT_FDCWD, pb, unix.RENAME_EXCHANGE); err != nil {
		return &fs.PathError{Op: "rename", Path: a, Err: err}
	}
	return nil
}

// copyHostXattrs copies the xattrs of the host file from to the host file
// to, leaving out the overlay's own (trusted.overlay.*, user.overlay.*).
// Symlinks cannot hold user.* xattrs on Linux, so none is copied to one,
// and xattrs the target file system does not support are skipped.
func copyHostXattrs(from, to string, symlink bool) error {
	names, err := listXattrs(from)
	if err != nil {
		return err
	}
	for _, name := range names {
		if strings.HasPrefix(name, trustedNS) || strings.HasPrefix(name, userNS) ||
			symlink && strings.HasPrefix(name, "user.") {
			continue
		}
		val, err := getXattr(from, name)
		if err != nil {
			return err
		}
		err = unix.Lsetxattr(to, name, val, 0)
		if err != nil && !errors.Is(err, unix.ENOTSUP) {
			return &fs.PathError{Op: "setxattr", Path: name, Err: err}
		}
	}
	return nil
}

// listXattrs returns the names of the xattrs of the host file p.
func listXattrs(p string) ([]string, error) {
	for {
		n, err := unix.Llistxattr(p, nil)
		if err != nil {
			if errors.Is(err, unix.ENOTSUP) {
				return nil, nil
			}
			return nil, &fs.PathError{Op: "listxattr", Path: "", Err: err}
		}
		if n == 0 {
			return nil, nil
		}
		buf := make([]byte, n)
		n, err = unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			continue // grew meanwhile
		}
		if err != nil {
			return nil, &fs.PathError{Op: "listxattr", Path: "", Err: err}
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

// getXattr returns the value of the xattr name of the host file p.
func getXattr(p, name string) ([]byte, error) {
	for {
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, &fs.PathError{Op: "getxattr", Path: name, Err: err}
		}
		buf := make([]byte, n)
		n, err = unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "getxattr", Path: name, Err: err}
		}
		return buf[:n], nil
	}
}

// redirect returns the redirect xattr of the directory dir of the
// kernel-format layer l, and whether it has one.
func (l layer) redirect(dir string) (string, bool, error) {
	p, err := l.realName(dir)
	if err != nil {
		return "", false, err
	}
	var buf [4096]byte
	n, err := unix.Lgetxattr(p, l.xattrNS+"redirect", buf[:])
	switch {
	case err == nil:
		return string(buf[:n]), true, nil
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
		return "", false, nil
	}
	return "", false, &fs.PathError{Op: "getxattr", Path: dir, Err: err}
}

// setRedirect sets the redirect xattr of the directory dir of the
// kernel-format layer l to target.
func (l layer) setRedirect(dir, target string) error {
	p, err := l.realName(dir)
	if err != nil {
		return err
	}
	if err := unix.Lsetxattr(p, l.xattrNS+"redirect", []byte(target), 0); err != nil {
		return &fs.PathError{Op: "setxattr", Path: dir, Err: err}
	}
	return nil
}
