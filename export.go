package overlay

import (
	"archive/tar"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// ExportOption configures ExportLayer.
type ExportOption func(*exportConfig)

// exportConfig collects what the ExportOptions set.
type exportConfig struct {
	clamp time.Time // the latest time written; zero for no clamping
}

// ClampTimes makes ExportLayer write no modification time later than t, as
// reproducible builds clamp to SOURCE_DATE_EPOCH: the same changes made at
// different times then export to the same bytes.
func ClampTimes(t time.Time) ExportOption {
	return func(c *exportConfig) { c.clamp = t }
}

// ExportLayer writes the overlay's upper layer to w as an OCI image layer
// (image-spec layer.md), an uncompressed tar: a deleted name is an empty
// file ".wh.NAME" and a directory that hides its lower contents holds an
// empty file ".wh..wh..opq". Every entry carries its mode, its owner where
// the upper reports one (0:0 otherwise), and its modification time in whole
// seconds; symlinks keep their targets. The work directory never appears,
// nor does a whiteout that hides nothing (one inside an opaque directory, or
// of a name the lowers do not show), which the kernel would list as a broken
// entry once the layer is unpacked for it. Wrap w in a gzip.Writer for a
// compressed layer.
//
// A kernel-format upper's redirected directory (renamed with a redirect
// xattr), which the OCI format cannot express, is written out whole, as the
// OCI format renames a directory: opaque, holding every entry the merged
// view shows in it and beneath it, read from whichever layer holds it. The
// lowers' redirects need nothing: the layer is exported against the view
// they give.
//
// The output is deterministic: entries come parents first and in name order
// within a directory (an opaque marker right after its directory), and no
// user or group name, access time or other host detail is written, so the
// same upper always gives the same bytes; see [ClampTimes]. Files are
// streamed, never held in memory.
//
// A read-only overlay has no changes and exports an empty layer. The names
// are read under the overlay's lock, but the files' data outside it: export
// an overlay that is not being changed (Commit first, or stop writing), or a
// file may be exported as it is at its turn. Device files cannot be exported.
// If there is an error, it will be of type [*fs.PathError].
func ExportLayer(w io.Writer, o *Overlay, opts ...ExportOption) error {
	var cfg exportConfig
	for _, opt := range opts {
		opt(&cfg)
	}
	layers, entries, err := o.exportSnapshot()
	if err != nil {
		return err
	}
	x := exporter{layers: layers, tw: tar.NewWriter(w), cfg: cfg}
	return x.writeAll(entries)
}

// writeAll writes the entries and the end-of-archive marker.
func (x *exporter) writeAll(entries []exportEntry) error {
	for _, e := range entries {
		if err := x.write(e); err != nil {
			return err
		}
	}
	if err := x.tw.Close(); err != nil {
		return &fs.PathError{Op: "export", Path: ".", Err: err}
	}
	return nil
}

// exportEntry is one name of the upper, as the snapshot found it.
type exportEntry struct {
	name   string      // the overlay name: "a/b"
	info   fs.FileInfo // as Lstat describes it
	target string      // a symlink's target
	layer  int         // the layer holding the content: 0, or a lower below a redirect
	src    string      // the name in that layer, if not name
}

// exportSnapshot lists the upper's names in export order under the
// overlay's read lock, and returns them with the layers they come from.
func (o *Overlay) exportSnapshot() ([]layer, []exportEntry, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.layers[0].fs == nil {
		return o.layers, nil, nil
	}
	lower, err := o.lowerOnly(".")
	if err != nil {
		return nil, nil, pathErr("export", ".", err)
	}
	s := snapshotter{o: o, up: o.layers[0]}
	if err := s.dir(".", lower, false, false); err != nil {
		return nil, nil, err
	}
	return o.layers, s.out, nil
}

// snapshotter lists the upper for one ExportLayer call. The caller holds
// o.mu for reading.
type snapshotter struct {
	o   *Overlay
	up  layer
	out []exportEntry
}

// dir appends the entries of the upper directory dir, and those beneath
// it, in export order. lower is what the lowers alone show at dir; cut says
// an ancestor is opaque. Internal names (the work directory) are left out,
// and so are whiteouts that hide nothing: in an opaque directory, or of a
// name the lowers do not show. The kernel lists such a whiteout as a broken
// entry once a layer is unpacked for it. A directory that a redirect moved
// (kernel format) is exported whole, as the OCI format renames one: opaque,
// with everything the merged view shows in it; whole says an ancestor was.
func (s *snapshotter) dir(dir string, lower lowerEntry, cut, whole bool) error {
	moved, err := s.o.movedWhole(dir, whole)
	if err != nil {
		return pathErr("export", dir, err)
	}
	if moved {
		return s.movedDir(dir, !whole)
	}
	list, err := s.up.readDir(dir)
	if err != nil {
		return pathErr("export", dir, err)
	}
	slices.SortFunc(list, exportOrder)
	cut = cut || len(list) > 0 && list[0].Name() == opaqueMarker
	for _, fi := range list {
		name := fi.Name()
		if strings.HasPrefix(name, internalPrefix) && name != opaqueMarker {
			continue
		}
		if h, ok := hiddenName(name); ok {
			if keep, err := s.hides(lower, !cut, join(dir, h)); err != nil || !keep {
				if err != nil {
					return pathErr("export", join(dir, name), err)
				}
				continue
			}
		}
		if err := s.add(join(dir, name), fi, lower, cut); err != nil {
			return err
		}
	}
	return nil
}

// movedDir appends what the merged view shows in the directory dir, which
// a redirect moved, and beneath it, read from the layers that hold it; top
// says dir is the moved directory itself, which gets an opaque marker.
func (s *snapshotter) movedDir(dir string, top bool) error {
	if top {
		s.out = append(s.out, exportEntry{name: join(dir, opaqueMarker), info: frozenInfo{name: opaqueMarker, mode: markerMode}})
	}
	list, err := s.o.mergedListing(dir)
	if err != nil {
		return pathErr("export", dir, err)
	}
	for _, fi := range list {
		p := join(dir, fi.Name())
		r, err := s.o.walk(p, false)
		if err == nil && !r.found {
			err = syscall.ENOENT
		}
		if err != nil {
			return pathErr("export", p, err)
		}
		e := exportEntry{name: p, info: r.info, layer: r.layer, src: r.src()}
		if r.isSymlink() {
			if e.target, err = s.o.layers[r.layer].readlink(e.src); err != nil {
				return pathErr("export", p, err)
			}
		}
		s.out = append(s.out, e)
		if r.isDir() {
			if err := s.movedDir(p, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// hides reports whether a whiteout of the name p hides anything, where the
// lowers alone show lower at p's parent and merge, if they do.
func (s *snapshotter) hides(lower lowerEntry, merge bool, p string) (bool, error) {
	if !merge || !lower.found {
		return false, nil
	}
	le, err := s.o.lowerOnly(p)
	return le.found, err
}

// add appends the entry p, described by fi, and what lies beneath it.
func (s *snapshotter) add(p string, fi fs.FileInfo, lower lowerEntry, cut bool) error {
	e := exportEntry{name: p, info: fi}
	var err error
	if fi.Mode()&fs.ModeSymlink != 0 {
		if e.target, err = s.up.readlink(p); err != nil {
			return pathErr("export", p, err)
		}
	}
	s.out = append(s.out, e)
	if !fi.IsDir() || isReserved(baseOf(p)) {
		return nil
	}
	var le lowerEntry
	if lower.found {
		if le, err = s.o.lowerOnly(p); err != nil {
			return pathErr("export", p, err)
		}
	}
	if !le.isDirEntry() {
		le = lowerEntry{}
	}
	return s.dir(p, le, cut, false)
}

// exportOrder sorts a directory's entries for export: the opaque marker
// first, then by name.
func exportOrder(a, b fs.FileInfo) int {
	switch {
	case a.Name() == opaqueMarker:
		return -1
	case b.Name() == opaqueMarker:
		return 1
	}
	return strings.Compare(a.Name(), b.Name())
}

// exporter writes the entries of one ExportLayer call.
type exporter struct {
	layers []layer // the overlay's layers, the upper first
	tw     *tar.Writer
	cfg    exportConfig
}

// write writes the entry e, streaming a regular file's content.
func (x *exporter) write(e exportEntry) error {
	hdr, err := x.header(e)
	if err != nil {
		return &fs.PathError{Op: "export", Path: e.name, Err: err}
	}
	if hdr.Typeflag != tar.TypeReg || isReserved(baseOf(e.name)) {
		err = x.tw.WriteHeader(hdr)
	} else {
		err = x.writeFile(hdr, e)
	}
	if err != nil {
		return &fs.PathError{Op: "export", Path: e.name, Err: errnoOf(err)}
	}
	return nil
}

// header returns the tar header of e; a regular file's size is filled in
// when it is opened.
func (x *exporter) header(e exportEntry) (*tar.Header, error) {
	mode := e.info.Mode()
	hdr := &tar.Header{
		Name:     e.name,
		Typeflag: tarType(mode),
		Mode:     tarMode(mode),
		ModTime:  x.time(e.info.ModTime()),
		Linkname: e.target,
		Format:   tar.FormatPAX,
	}
	if uid, gid, ok := ownerOf(e.info); ok {
		hdr.Uid, hdr.Gid = uid, gid
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		hdr.Name += "/"
	case tar.TypeChar, tar.TypeBlock:
		return nil, syscall.ENOTSUP
	}
	return hdr, nil
}

// writeFile writes the header and content of the regular file e, sized
// and timed as it is when opened.
func (x *exporter) writeFile(hdr *tar.Header, e exportEntry) error {
	src := e.src
	if src == "" {
		src = e.name
	}
	f, err := x.layers[e.layer].open(src, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close() // best effort: the file was only read
	info, err := f.Stat()
	if err != nil {
		return err
	}
	hdr.Size, hdr.ModTime = info.Size(), x.time(info.ModTime())
	if err := x.tw.WriteHeader(hdr); err != nil {
		return err
	}
	if _, err := io.CopyN(x.tw, f, hdr.Size); err != nil {
		if err == io.EOF {
			return errShrunk
		}
		return err
	}
	return nil
}

// errShrunk reports a file that lost data while it was being exported.
var errShrunk = sentinel("file shrank during export")

// time returns t as exported: clamped, in whole seconds.
func (x *exporter) time(t time.Time) time.Time {
	if !x.cfg.clamp.IsZero() && t.After(x.cfg.clamp) {
		t = x.cfg.clamp
	}
	return time.Unix(t.Unix(), 0).UTC()
}

// tarType returns the tar type flag of a file of mode m.
func tarType(m fs.FileMode) byte {
	switch {
	case m.IsDir():
		return tar.TypeDir
	case m&fs.ModeSymlink != 0:
		return tar.TypeSymlink
	case m&fs.ModeNamedPipe != 0:
		return tar.TypeFifo
	case m&fs.ModeCharDevice != 0:
		return tar.TypeChar
	case m&fs.ModeDevice != 0:
		return tar.TypeBlock
	}
	return tar.TypeReg
}

// The tar mode bits beyond the permissions.
const (
	tarSetuid = 0o4000
	tarSetgid = 0o2000
	tarSticky = 0o1000
)

// tarMode returns the tar mode field for a file of mode m.
func tarMode(m fs.FileMode) int64 {
	bits := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		bits |= tarSetuid
	}
	if m&fs.ModeSetgid != 0 {
		bits |= tarSetgid
	}
	if m&fs.ModeSticky != 0 {
		bits |= tarSticky
	}
	return bits
}
