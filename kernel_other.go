//go:build !linux

package overlay

import (
	"io/fs"
	"syscall"
)

// kernelMarkersSupported reports whether this system has the kernel's
// whiteout devices and overlay xattrs.
const kernelMarkersSupported = false

func isWhiteoutInfo(fs.FileInfo) bool             { return false }
func (layer) opaqueXattr(string) (bool, error)    { return false, nil }
func (layer) setOpaqueXattr(string) error         { return syscall.ENOTSUP }
func (layer) clearOpaqueXattr(string) error       { return syscall.ENOTSUP }
func (layer) mknodWhiteout(string) error          { return syscall.ENOTSUP }
func (layer) renameWhiteout(string, string) error { return syscall.ENOTSUP }
func (layer) exchange(string, string) error       { return syscall.ENOTSUP }
func copyHostXattrs(string, string, bool) error   { return syscall.ENOTSUP }

func (layer) redirect(string) (string, bool, error) { return "", false, nil }
func (layer) setRedirect(string, string) error      { return syscall.ENOTSUP }
