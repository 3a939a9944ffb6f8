package overlay

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"

	"github.com/spf13/afero"
)

// The namespaces of the kernel's overlay xattrs.
const (
	trustedNS = "trusted.overlay."
	userNS    = "user.overlay."
)

// xattrNS returns the namespace of the overlay xattrs the options select.
func (c config) xattrNS() string {
	if c.userXattr {
		return userNS
	}
	return trustedNS
}

// upperLayer wraps the upper in the format the options select. A
// kernel-format upper must be a directory on the host.
func (c config) upperLayer(fsys afero.Fs) (layer, error) {
	l := newLayer(fsys)
	switch {
	case fsys == nil:
		return l, nil
	case c.format == FormatOCI:
		l.names = new(upperIndex)
		return l, nil
	case c.format != FormatKernel:
		return layer{}, fmt.Errorf("overlay: unknown upper format %v", c.format)
	case !kernelMarkersSupported:
		return layer{}, errors.New("overlay: FormatKernel is supported on Linux only")
	}
	if !l.host {
		return layer{}, errors.New("overlay: FormatKernel needs an upper layer that is a directory on the host " +
			"(an afero.Fs with RealPath, such as afero.BasePathFs over afero.OsFs)")
	}
	l.kernel, l.noOCI, l.xattrNS = true, true, c.xattrNS()
	return l, nil
}

// lowerLayer wraps a lower. A lower that is a directory on the host is read
// in both formats, so a stack may mix OCI and kernel layers.
func (c config) lowerLayer(fsys afero.Fs) layer {
	l := newLayer(fsys)
	if l.host && kernelMarkersSupported {
		l.kernel, l.xattrNS = true, c.xattrNS()
	}
	return l
}

// realName returns the host path of name in the kernel-format layer l.
func (l layer) realName(name string) (string, error) {
	return l.fs.(realPather).RealPath(l.path(name))
}

// whiteoutDevAt reports whether name in l is a whiteout device.
func (l layer) whiteoutDevAt(name string) (bool, error) {
	fi, err := l.lstat(name)
	switch {
	case err == nil:
		return isWhiteoutInfo(fi), nil
	case isNotExist(err):
		return false, nil
	}
	return false, err
}

// markerMode is the mode of the OCI markers a kernel-format listing shows,
// that of the markers an OCI upper holds.
const markerMode fs.FileMode = 0o644

// kernelMarkers rewrites the listing of the directory dir of the
// kernel-format layer l into the OCI form every listing consumer reads: a
// whiteout device NAME becomes ".wh.NAME", and an opaque directory gets an
// ".wh..wh..opq" entry.
func (l layer) kernelMarkers(dir string, list []fs.FileInfo) ([]fs.FileInfo, error) {
	for i, fi := range list {
		if isWhiteoutInfo(fi) {
			list[i] = frozenInfo{name: whiteoutPrefix + fi.Name(), mode: markerMode, modTime: fi.ModTime(), sys: fi.Sys()}
		}
	}
	opaque, err := l.opaqueXattr(dir)
	if err != nil {
		return nil, err
	}
	if opaque {
		list = append(list, frozenInfo{name: opaqueMarker, mode: markerMode})
	}
	return list, nil
}

// probeXattrs checks that a kernel-format upper can both write and read
// back its opaque xattr. Without CAP_SYS_ADMIN, setting a trusted.* xattr
// fails and, worse, reading one silently finds nothing.
func (o *Overlay) probeXattrs() error {
	up := o.layers[0]
	if !up.noOCI {
		return nil
	}
	tmp := o.tmpName()
	if err := up.mkdir(tmp, 0o700); err != nil {
		return pathErr("new", workDir, err)
	}
	defer o.discard(tmp)
	if err := up.setOpaqueXattr(tmp); err != nil {
		return fmt.Errorf("overlay: FormatKernel cannot set the xattr %sopaque in the upper (%w); "+
			"trusted.* xattrs need CAP_SYS_ADMIN, user.* ones WithUserXattr and a file system that holds them",
			up.xattrNS, errnoOf(err))
	}
	opaque, err := up.opaqueXattr(tmp)
	if err != nil || !opaque {
		return fmt.Errorf("overlay: FormatKernel cannot read back the xattr %sopaque in the upper (%v); "+
			"reading trusted.* xattrs needs CAP_SYS_ADMIN", up.xattrNS, err)
	}
	return nil
}

// overDevice reports whether the name the walk r did not find is held by a
// whiteout device, in a kernel-format upper. A name created there replaces
// the device in one step, as the kernel's create over a whiteout does: it is
// built in the work directory and put in place by placeOverDevice. The OCI
// format drops its whiteout, a file of its own, after the name is created
// (entryAdded).
func (o *Overlay) overDevice(r resolved) bool {
	return r.whiteout && o.layers[0].noOCI
}

// placeOverDevice renames tmp, finished in the work directory, to the name
// p that a whiteout device holds, in one step: rename(2) replaces a device
// with a non-directory, and a directory is exchanged with it
// (RENAME_EXCHANGE), the device then being removed from the work
// directory. The caller holds o.mu for writing.
func (o *Overlay) placeOverDevice(tmp, p string, dir bool) error {
	up := o.layers[0]
	if !dir {
		return up.rename(tmp, p)
	}
	if err := up.exchange(tmp, p); err != nil {
		return err
	}
	o.discard(tmp)
	return nil
}

// whiteOutUpper replaces the upper entry name (a directory with whatever it
// holds included) by a whiteout in one step, in a kernel-format upper: it
// moves the entry into the work directory, leaving a whiteout behind, and
// discards it there. The caller holds o.mu for writing.
func (o *Overlay) whiteOutUpper(name string) error {
	up := o.layers[0]
	tmp := o.tmpName()
	if err := up.renameWhiteout(name, tmp); err != nil {
		return err
	}
	o.discard(tmp)
	return nil
}

// copyXattrs copies the xattrs of the lower entry e to tmp, its copy in a
// kernel-format upper, as the kernel's copy-up does: every xattr but the
// overlay's own. Nothing is copied for an OCI upper or from a lower that is
// not a directory on the host.
func (o *Overlay) copyXattrs(e entry, tmp string) error {
	up, low := o.layers[0], o.layers[e.layer]
	if !up.noOCI || !low.kernel {
		return nil
	}
	from, err := low.realName(e.src())
	if err != nil {
		return err
	}
	to, err := up.realName(tmp)
	if err != nil {
		return err
	}
	return copyHostXattrs(from, to, e.isSymlink())
}

// ErrRedirect is the error for a redirected directory (one the kernel, or
// an overlay in FormatKernel, renamed with a redirect xattr) where it cannot
// be honoured: WithUserXattr, where the kernel's userxattr option does not
// follow redirects either, and Convert of a layer to FormatOCI, which cannot
// express one. A lookup refused for it also matches syscall.EPERM, the
// kernel's error for the same refusal.
var ErrRedirect = errors.New("overlay: redirected directory (redirect xattr) not supported here")

// errRedirectRefused is the error of a lookup that meets a redirect it may
// not follow: it matches both ErrRedirect and EPERM, as the kernel refuses
// such a lookup ("refusing to follow redirect") with EPERM.
var errRedirectRefused error = redirectRefused{}

type redirectRefused struct{}

func (redirectRefused) Error() string { return ErrRedirect.Error() }

func (redirectRefused) Is(target error) bool {
	return target == ErrRedirect || target == syscall.EPERM
}

// redirectedTo returns the name at which the lowers hold the directory dir
// of the kernel-format upper: the target of its redirect xattr, if it has
// one, or lp, the name its parent implies. An absolute redirect is a name
// from the root; a relative one replaces the last component of lp, as the
// kernel reads them.
//
// lowers says whether the parent's merge includes the lowers; the result
// says whether dir's does. An absolute redirect is looked up in the lowers
// from their root even below a directory only the upper holds, as the
// kernel does. With WithUserXattr, as with the kernel's userxattr option,
// redirects are not followed: one is refused with errRedirectRefused.
func (o *Overlay) redirectedTo(dir, lp string, lowers bool) (string, bool, error) {
	target, abs, ok, err := o.readRedirect(o.layers[0], dir)
	switch {
	case err != nil || !ok:
		return lp, lowers, err
	case abs && o.hasLowers():
		return o.reachLowers(target)
	case abs:
		return target, false, nil
	case !lowers:
		return lp, false, nil
	}
	return o.reachLowers(join(parentOf(lp), target))
}

// hasLowers reports whether the overlay's root merges any lower.
func (o *Overlay) hasLowers() bool {
	return o.rootDirs[len(o.rootDirs)-1] != 0
}

// lowerRedirect is readRedirect for the directory dir of the lower l; a
// lower that is not a directory on the host holds no redirects.
func (o *Overlay) lowerRedirect(l layer, dir string) (target string, abs, ok bool, err error) {
	if !l.kernel {
		return "", false, false, nil
	}
	return o.readRedirect(l, dir)
}

// readRedirect returns the redirect xattr of the directory dir of the
// kernel-format layer l, if it has one: the target in the overlay's name
// form, and whether it is absolute (a name from the root) rather than
// relative (a sibling's name). A target validRedirect refuses is EINVAL.
// With WithUserXattr the redirect is refused.
func (o *Overlay) readRedirect(l layer, dir string) (target string, abs, ok bool, err error) {
	t, ok, err := l.redirect(dir)
	switch {
	case err != nil || !ok:
		return "", false, false, err
	case o.cfg.userXattr:
		return "", false, false, &fs.PathError{Op: "lookup", Path: dir, Err: errRedirectRefused}
	}
	abs = strings.HasPrefix(t, "/")
	if abs {
		t = t[1:]
	}
	if !validRedirect(t, abs) {
		return "", false, false, &fs.PathError{Op: "getxattr", Path: dir, Err: syscall.EINVAL}
	}
	return t, abs, true, nil
}

// validRedirect reports whether t, a redirect target without its leading
// slash (abs says it had one), is one the overlay follows. The kernel
// refuses an empty target, an empty component and a relative target with
// a slash when it reads the xattr; the overlay also refuses what it cannot
// name (a NUL byte, a component over 255 bytes, a reserved name). "." and
// ".." components pass: the kernel fails only the lookup that reaches one
// (see isDotName).
func validRedirect(t string, abs bool) bool {
	if t == "" || !abs && strings.Contains(t, "/") || strings.IndexByte(t, 0) >= 0 {
		return false
	}
	for c := range strings.SplitSeq(t, "/") {
		if c == "" || len(c) > maxNameLen || isReserved(c) {
			return false
		}
	}
	return true
}

// isDotName reports whether the component c of a redirect target is "."
// or "..". The kernel looks redirect targets up one component at a time
// (lookup_one_len), which refuses those two with EACCES: a lookup that
// reaches one in any lower fails with EACCES, and one that stops before
// it (at a missing name, say) does not.
func isDotName(c string) bool {
	return c == "." || c == ".."
}

// reachLowers returns p, the name at which the lowers hold a directory of
// the upper that a redirect sends there, and whether they hold it. Where
// p has a "." or ".." component, the lookup fails with EACCES if the
// lowers hold the directory before that component, and finds nothing
// otherwise, as the kernel's does.
func (o *Overlay) reachLowers(p string) (string, bool, error) {
	before, dots := beforeDots(p)
	if !dots {
		return p, true, nil
	}
	e, err := o.lowerOnly(before)
	switch {
	case err != nil:
		return "", false, err
	case e.found && e.isDir() && len(e.dirs) > 0:
		return "", false, syscall.EACCES
	}
	return p, false, nil
}

// beforeDots returns the components of p before its first "." or ".."
// component ("." if that is the first), and whether p has one.
func beforeDots(p string) (string, bool) {
	for start, rest := 0, p; ; {
		c, after, more := strings.Cut(rest, "/")
		switch {
		case isDotName(c) && start == 0:
			return ".", true
		case isDotName(c):
			return p[:start-1], true
		case !more:
			return p, false
		}
		start, rest = start+len(c)+1, after
	}
}

// moveRedirect renames a directory that lower layers contribute to, in a
// kernel-format upper, as the kernel does with redirect_dir=on: the
// directory alone is copied up, gets a redirect xattr naming where the
// lowers hold it (always the absolute form), and is renamed, leaving a
// whiteout at the old name if the lowers show one there. Nothing under it
// is copied. The caller holds o.mu for writing.
func (o *Overlay) moveRedirect(src, dst resolved, to string, lowerOld bool) error {
	if err := o.ensureUpperDir(src.path); err != nil {
		return err
	}
	up := o.layers[0]
	if err := up.setRedirect(src.path, "/"+src.lowerPath()); err != nil {
		return err
	}
	return o.moveUpper(src, dst, lowerOld)
}

// movedWhole reports whether the upper directory p is, or is below, a
// directory that a redirect moved (kernel format): whole says an ancestor
// is. Changes and ExportLayer see such a directory as if it had been copied
// up whole, since the lower content it shows is not the lowers' at p. A
// redirect whose target is p's own lower name moves nothing. The caller
// holds o.mu for reading.
func (o *Overlay) movedWhole(p string, whole bool) (bool, error) {
	if whole || !o.layers[0].noOCI || p == "." {
		return whole, nil
	}
	r, err := o.walk(p, false)
	if err != nil {
		return false, err
	}
	return r.found && r.isDir() && r.lpath != "", nil
}

// mergedListing lists the merged directory p. The caller holds o.mu for
// reading.
func (o *Overlay) mergedListing(p string) ([]fs.FileInfo, error) {
	r, err := o.walk(p, false)
	switch {
	case err != nil:
		return nil, err
	case !r.found:
		return nil, syscall.ENOENT
	}
	return o.readMerged(r.entry)
}
