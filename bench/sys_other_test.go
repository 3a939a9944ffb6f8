//go:build !linux

package bench

import "errors"

// errNotLinux says the kernel's overlayfs and tmpfs exist only on Linux.
var errNotLinux = errors.New("needs Linux")

// canMount reports whether this process may mount file systems: never here.
func canMount() bool { return false }

// mountTmpfs fails: there is no tmpfs to mount here.
func mountTmpfs(string) error { return errNotLinux }

// unmount fails: nothing was mounted here.
func unmount(string) error { return errNotLinux }

// mountOverlay fails: there is no kernel overlayfs here.
func mountOverlay([]string, string, string, string) error { return errNotLinux }

// mknodWhiteout fails: kernel whiteouts mean nothing here.
func mknodWhiteout(string) error { return errNotLinux }

// fsTypeName cannot tell the file system type here.
func fsTypeName(string) string { return "unknown file system" }
