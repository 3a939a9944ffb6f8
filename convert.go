package overlay

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"github.com/spf13/afero"
)

// Convert rewrites the markers of layer, an upper or a layer that is a
// directory on the host (an afero.Fs with RealPath whose root is that host
// directory, such as afero.BasePathFs over afero.OsFs; over a MemMapFs it
// is not), into the format to, in place, as containerd does when it unpacks
// an image layer for the kernel.
//
// To FormatKernel, a whiteout ".wh.NAME" becomes a character device 0:0
// NAME and an opaque marker ".wh..wh..opq" becomes the opaque xattr
// (trusted.overlay.opaque, or user.overlay.opaque WithUserXattr). To
// FormatOCI, the reverse. A whiteout's owner, permission bits and times
// carry over; so do the times of every directory Convert changes. An opaque
// marker is made afresh, as the process makes any file in its directory,
// since the kernel format has no file to carry its metadata. The overlay's
// work directory (".wh..wh.work") is left as it is.
//
// The OCI format cannot express a redirected directory (one the kernel
// renamed with redirect_dir=on), so converting a layer that holds one to
// FormatOCI fails with an error matching [ErrRedirect] before anything is
// changed. Materialising it, as the OCI format renames a directory (copied
// whole, opaque), needs what the redirect points at, which is in the layers
// below, not in the layer itself: open the layer as a FormatKernel upper
// over its lowers and use [ExportLayer], which writes the redirected
// directories out whole. A whiteout ".wh.NAME" beside an entry NAME is
// EEXIST.
// Options other than WithUserXattr are ignored.
// If there is an error, it will be of type [*fs.PathError].
func Convert(layer afero.Fs, to Format, opts ...Option) error {
	var cfg config
	for _, opt := range opts {
		opt(&cfg)
	}
	root, ok := hostRoot(layer)
	if !ok || !kernelMarkersSupported {
		return &fs.PathError{Op: "convert", Path: ".", Err: errors.ErrUnsupported}
	}
	c := converter{root: root, ns: cfg.xattrNS()}
	var err error
	switch to {
	case FormatKernel:
		err = c.walk(".", c.toKernel)
	case FormatOCI:
		if err = c.walk(".", c.checkNoRedirect); err == nil {
			err = c.walk(".", c.toOCI)
		}
	default:
		err = pathErr("convert", ".", syscall.EINVAL)
	}
	return err
}

// converter rewrites the markers of the layer at the host directory root.
type converter struct {
	root string // the layer's host directory
	ns   string // the namespace of the overlay xattrs
}

// host returns the host path of the layer name p.
func (c converter) host(p string) string {
	if p == "." {
		return c.root
	}
	return c.root + "/" + p
}

// walk calls fn on every directory of the layer, parents first, and keeps
// the times of each directory fn changes. It skips the work directory.
func (c converter) walk(dir string, fn func(dir string, list []os.DirEntry) error) error {
	hp := c.host(dir)
	info, err := os.Lstat(hp)
	if err != nil {
		return pathErr("convert", dir, err)
	}
	list, err := os.ReadDir(hp)
	if err != nil {
		return pathErr("convert", dir, err)
	}
	if err := fn(dir, list); err != nil {
		return err
	}
	if err := os.Chtimes(hp, fileAtime(info), info.ModTime()); err != nil {
		return pathErr("convert", dir, err)
	}
	for _, de := range list {
		if de.IsDir() && !strings.HasPrefix(de.Name(), internalPrefix) {
			if err := c.walk(join(dir, de.Name()), fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// toKernel turns the OCI markers in dir into kernel ones.
func (c converter) toKernel(dir string, list []os.DirEntry) error {
	names := make(map[string]bool, len(list))
	for _, de := range list {
		names[de.Name()] = true
	}
	kl := layer{fs: afero.NewBasePathFs(afero.NewOsFs(), c.root), rooted: true, host: true, xattrNS: c.ns}
	for _, de := range list {
		name := de.Name()
		p := join(dir, name)
		var err error
		switch h, wh := hiddenName(name); {
		case name == opaqueMarker:
			if err = kl.setOpaqueXattr(dir); err == nil {
				err = os.Remove(c.host(p))
			}
		case wh && names[h]:
			err = syscall.EEXIST
		case wh:
			err = c.markerToDevice(p, join(dir, h))
		}
		if err != nil {
			return pathErr("convert", p, err)
		}
	}
	return nil
}

// markerToDevice replaces the OCI whiteout file marker by a whiteout
// device at name, with the marker's permission bits and times.
func (c converter) markerToDevice(marker, name string) error {
	info, err := os.Lstat(c.host(marker))
	if err != nil {
		return err
	}
	kl := layer{fs: afero.NewBasePathFs(afero.NewOsFs(), c.root), rooted: true, host: true}
	if err := kl.mknodWhiteout(name); err != nil {
		return err
	}
	if err := takeWhiteoutMeta(c.host(name), info); err != nil {
		return err
	}
	return os.Remove(c.host(marker))
}

// takeWhiteoutMeta gives the host file p the owner, permission bits and
// times of the whiteout info, so that a whiteout comes through a
// conversion as it was. The owner is set explicitly because a new file in a
// set-group-ID directory takes the directory's group.
func takeWhiteoutMeta(p string, info fs.FileInfo) error {
	if uid, gid, ok := fileOwner(info); ok {
		if err := os.Lchown(p, uid, gid); err != nil {
			return err
		}
	}
	if err := os.Chmod(p, info.Mode().Perm()); err != nil {
		return err
	}
	return os.Chtimes(p, fileAtime(info), info.ModTime())
}

// checkNoRedirect fails with ErrRedirect if a directory in dir is
// redirected.
func (c converter) checkNoRedirect(dir string, list []os.DirEntry) error {
	kl := layer{fs: afero.NewBasePathFs(afero.NewOsFs(), c.root), rooted: true, host: true, xattrNS: c.ns}
	for _, de := range list {
		if !de.IsDir() {
			continue
		}
		p := join(dir, de.Name())
		_, redirected, err := kl.redirect(p)
		if err == nil && redirected {
			err = ErrRedirect
		}
		if err != nil {
			return pathErr("convert", p, err)
		}
	}
	return nil
}

// toOCI turns the kernel markers in dir into OCI ones.
func (c converter) toOCI(dir string, list []os.DirEntry) error {
	kl := layer{fs: afero.NewBasePathFs(afero.NewOsFs(), c.root), rooted: true, host: true, xattrNS: c.ns}
	opaque, err := kl.opaqueXattr(dir)
	if err == nil && opaque {
		err = c.createOpaqueMarker(join(dir, opaqueMarker))
		if err == nil {
			err = kl.clearOpaqueXattr(dir)
		}
	}
	if err != nil {
		return pathErr("convert", dir, err)
	}
	for _, de := range list {
		p := join(dir, de.Name())
		if de.Type()&fs.ModeCharDevice == 0 {
			continue
		}
		info, err := os.Lstat(c.host(p))
		if err != nil {
			return pathErr("convert", p, err)
		}
		if !isWhiteoutInfo(info) {
			continue
		}
		err = os.Remove(c.host(p))
		if err == nil {
			err = c.createWhiteoutMarker(whiteoutPath(p), info)
		}
		if err != nil {
			return pathErr("convert", p, err)
		}
	}
	return nil
}

// createOpaqueMarker creates the empty OCI opaque marker p, as the process
// creates any file there: the kernel format holds no marker, so there is no
// owner, mode or time to carry over.
func (c converter) createOpaqueMarker(p string) error {
	hp := c.host(p)
	if err := os.WriteFile(hp, nil, 0o644); err != nil {
		return err
	}
	return os.Chmod(hp, 0o644)
}

// createWhiteoutMarker creates the empty OCI whiteout marker p with the
// metadata of the whiteout device info.
func (c converter) createWhiteoutMarker(p string, info fs.FileInfo) error {
	hp := c.host(p)
	if err := os.WriteFile(hp, nil, 0); err != nil {
		return err
	}
	return takeWhiteoutMeta(hp, info)
}
