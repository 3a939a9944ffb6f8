package overlay

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/spf13/afero"
)

// Limits that ApplyLayer enforces unless told otherwise.
const (
	// DefaultMaxLayerSize is the most bytes of file content ApplyLayer
	// writes for one layer: 64 GiB.
	DefaultMaxLayerSize = 64 << 30
	// DefaultMaxLayerEntries is the most entries ApplyLayer accepts in one
	// layer.
	DefaultMaxLayerEntries = 1 << 20
)

// ApplyOption configures ApplyLayer.
type ApplyOption func(*applyConfig)

// applyConfig collects what the ApplyOptions set.
type applyConfig struct {
	maxSize    int64
	maxEntries int
}

// MaxLayerSize sets the most bytes of file content ApplyLayer writes for one
// layer, counting every copy a hard link makes; a layer that declares more
// is refused before the excess is written. n <= 0 removes the limit. The
// default is DefaultMaxLayerSize.
func MaxLayerSize(n int64) ApplyOption {
	return func(c *applyConfig) { c.maxSize = n }
}

// MaxLayerEntries sets the most entries ApplyLayer accepts in one layer.
// n <= 0 removes the limit. The default is DefaultMaxLayerEntries.
func MaxLayerEntries(n int) ApplyOption {
	return func(c *applyConfig) { c.maxEntries = n }
}

// ApplyLayer applies the OCI image layer read from r onto dst, as containerd
// applies a layer onto the layers below it (image-spec layer.md). The layer
// may be a plain tar or gzip-compressed; the compression is recognised by its
// magic bytes. Entries are created with their modes, times and owners (an
// owner dst refuses for lack of privilege is left as it is), a whiteout
// ".wh.NAME" deletes NAME, and an opaque marker ".wh..wh..opq" deletes what
// dst held in its directory, wherever the marker stands in the archive.
// Markers never delete what the layer itself creates. A root entry ("./")
// is skipped: dst's root keeps its attributes.
//
// A hostile archive is refused with an error matching [ErrInvalidLayer], and
// nothing is ever written outside dst: absolute names, names with "..",
// symlink targets that climb out of the root, hard links to anything but an
// earlier regular file of the same layer, entries beneath a symlink or a file
// of the same layer, duplicate names, a whiteout of a name the layer also
// holds, truncated archives (the end-of-archive marker is required) and
// layers over the limits set by [MaxLayerSize] and [MaxLayerEntries]. An
// existing symlink in dst is never followed: an entry replaces it, and so
// does a directory the layer implies by the entries beneath it (created
// with mode 0755 if missing), as the kernel's overlayfs shows such a layer.
// Symlink targets are stored verbatim; an absolute one is fine, since it
// resolves inside the image's root. A hard link becomes a copy of its
// target, since afero has no hard links. Device files and FIFOs are refused
// with an error matching errors.ErrUnsupported. Entries beneath another
// tool's metadata (".wh..wh." directories, as aufs leaves) are checked and
// skipped.
//
// ApplyLayer is not atomic: when it fails, dst holds the entries applied
// before the failure. If there is an error, it will be of type [*LayerError].
func ApplyLayer(dst afero.Fs, r io.Reader, opts ...ApplyOption) error {
	cfg := applyConfig{maxSize: DefaultMaxLayerSize, maxEntries: DefaultMaxLayerEntries}
	for _, opt := range opts {
		opt(&cfg)
	}
	if dst == nil {
		return &LayerError{Err: refuse("nil destination")}
	}
	a := &applier{dst: newLayer(dst), cfg: cfg, names: make(map[string]nameState)}
	return a.run(r)
}

// ErrInvalidLayer is matched, through errors.Is, by every error with which
// ApplyLayer and NewTarFs refuse an archive that breaks the layer format or
// tries to reach outside its root.
var ErrInvalidLayer = errors.New("invalid layer")

// LayerError reports a problem with one entry of a layer archive, or with the
// archive as a whole.
type LayerError struct {
	Entry string // the entry's name as the archive spells it; "" for the whole archive
	Err   error  // what is wrong
}

// Error returns the entry's name, quoted, and what is wrong with it.
func (e *LayerError) Error() string {
	if e.Entry == "" {
		return "layer: " + e.Err.Error()
	}
	return "layer entry " + strconv.Quote(e.Entry) + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *LayerError) Unwrap() error { return e.Err }

// refusal is why an archive is refused; it matches ErrInvalidLayer and,
// where there is one, its cause.
type refusal struct {
	msg   string
	cause error
}

// refuse returns a refusal with the given reason.
func refuse(msg string) error { return &refusal{msg: msg} }

func (r *refusal) Error() string {
	if r.cause != nil {
		return r.msg + ": " + r.cause.Error()
	}
	return r.msg
}

func (r *refusal) Unwrap() []error {
	if r.cause != nil {
		return []error{ErrInvalidLayer, r.cause}
	}
	return []error{ErrInvalidLayer}
}

// unsupported is the error for entries afero cannot create; it matches
// errors.ErrUnsupported.
type unsupported string

func (u unsupported) Error() string        { return string(u) }
func (u unsupported) Is(target error) bool { return target == errors.ErrUnsupported }

// errNoSymlinkDst reports a destination that cannot hold symlinks. It
// matches afero.ErrNoSymlink.
var errNoSymlinkDst error = noSymlinkDst{}

type noSymlinkDst struct{}

func (noSymlinkDst) Error() string        { return "the destination cannot hold symlinks" }
func (noSymlinkDst) Is(target error) bool { return target == afero.ErrNoSymlink }

// nameState is what an apply knows about one name of its layer.
type nameState struct {
	entry  byte // the tar type of the layer's entry of that name; 0 for none
	kept   bool // the layer put this name in dst, or a name beneath it
	whited bool // the layer whites this name out
}

// applier carries the state of one ApplyLayer call.
type applier struct {
	dst     layer
	cfg     applyConfig
	names   map[string]nameState // by cleaned name
	dirs    []dirAttrs           // directory entries, whose attributes are set last
	entries int
	written int64 // bytes of content written so far, hard-link copies included
}

// dirAttrs is a directory entry's mode and times, applied once its children
// are in place, since adding children changes a directory's times and a
// read-only mode would stop them.
type dirAttrs struct {
	name string
	info fs.FileInfo
}

// run applies the archive r.
func (a *applier) run(r io.Reader) error {
	src, zr, err := decompress(r)
	if err != nil {
		return &LayerError{Err: err}
	}
	cr := &countingReader{r: src}
	tr := tar.NewReader(cr)
	for {
		end := cr.n
		hdr, err := tr.Next()
		if err == io.EOF {
			if !hasTrailer(end, cr.n) {
				return &LayerError{Err: errTruncated}
			}
			break
		}
		if err != nil {
			return &LayerError{Err: archiveErr(err)}
		}
		if err := a.entry(hdr, tr); err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return &LayerError{Entry: hdr.Name, Err: archiveErr(err)}
		}
	}
	if zr != nil {
		if err := drainGzip(zr); err != nil {
			return &LayerError{Err: err}
		}
	}
	return a.finish()
}

// errTruncated is the refusal of an archive that ends before its
// end-of-archive marker.
var errTruncated = &refusal{msg: "truncated archive", cause: io.ErrUnexpectedEOF}

// archiveErr turns an error of the tar reader into a refusal.
func archiveErr(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return errTruncated
	}
	return &refusal{msg: "malformed archive", cause: err}
}

// hasTrailer reports whether a tar reader that hit the end of its input at
// offset now, after an entry whose data ended at offset end, read the two
// zero blocks of the end-of-archive marker. The tar package accepts an input
// that just stops; a layer that does has lost its tail.
func hasTrailer(end, now int64) bool {
	return now >= roundBlock(end)+2*blockSize
}

// blockSize is the size of a tar block.
const blockSize = 512

// roundBlock rounds n up to a whole number of tar blocks.
func roundBlock(n int64) int64 {
	return (n + blockSize - 1) / blockSize * blockSize
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Magic numbers of the compressions a layer may use.
var (
	gzipMagic  = []byte{0x1f, 0x8b}
	zstdMagic  = []byte{0x28, 0xb5, 0x2f, 0xfd}
	bzip2Magic = []byte("BZh")
	xzMagic    = []byte{0xfd, '7', 'z', 'X', 'Z', 0}
)

// decompress returns the tar stream in r, decompressing gzip. The gzip
// reader, if any, is returned too, so that its end can be checked.
func decompress(r io.Reader) (io.Reader, *gzip.Reader, error) {
	br := bufio.NewReader(r)
	magic, _ := br.Peek(len(xzMagic)) // a short input is the tar reader's to refuse
	if !bytes.HasPrefix(magic, gzipMagic) {
		return br, nil, compressedErr(magic)
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return nil, nil, &refusal{msg: "malformed gzip stream", cause: err}
	}
	return zr, zr, nil
}

// compressedErr returns an error if magic starts a compressed stream: the
// tar stream inside must be decompressed before use. It returns nil for
// anything else.
func compressedErr(magic []byte) error {
	for _, c := range []struct {
		magic []byte
		name  string
	}{{gzipMagic, "gzip"}, {zstdMagic, "zstd"}, {bzip2Magic, "bzip2"}, {xzMagic, "xz"}} {
		if bytes.HasPrefix(magic, c.magic) {
			return refuse(c.name + "-compressed layer: decompress it first")
		}
	}
	return nil
}

// maxTrailing is how much data may follow the end of the tar stream inside
// a gzip stream (tar pads to whole records of 10 KiB).
const maxTrailing = 1 << 20

// drainGzip reads the gzip stream to its end, so that a truncated or
// corrupt stream is caught by its checksum.
func drainGzip(zr *gzip.Reader) error {
	_, err := io.CopyN(io.Discard, zr, maxTrailing+1)
	switch {
	case err == io.EOF:
		return nil
	case err == nil:
		return refuse("too much data after the end of the archive")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errTruncated
	}
	return &refusal{msg: "corrupt gzip stream", cause: err}
}

// entry applies one archive entry, whose content data holds.
func (a *applier) entry(hdr *tar.Header, data io.Reader) error {
	name, skip, err := a.admit(hdr)
	if err == nil && !skip {
		err = a.dispatch(name, hdr, data)
	}
	if err != nil {
		return &LayerError{Entry: hdr.Name, Err: errnoOf(err)}
	}
	return nil
}

// dispatch applies the admitted entry name according to its kind.
func (a *applier) dispatch(name string, hdr *tar.Header, data io.Reader) error {
	if err := a.parents(name); err != nil {
		return err
	}
	if dir, ok := internalDir(name); ok {
		if err := a.validate(name, hdr); err != nil {
			return err
		}
		if baseOf(dir) == opaqueMarker {
			return a.clearDir(parentOf(dir)) // a marker that holds entries is a marker still
		}
		return nil // beneath another tool's metadata (aufs): not part of the tree
	}
	base := baseOf(name)
	switch {
	case base == opaqueMarker:
		return a.clearDir(parentOf(name))
	case strings.HasPrefix(base, internalPrefix):
		return nil // another tool's metadata (aufs): not part of the tree
	case isReserved(base):
		return a.whiteout(join(parentOf(name), base[len(whiteoutPrefix):]))
	}
	if err := a.claim(name, hdr.Typeflag); err != nil {
		return err
	}
	return a.create(name, hdr, data)
}

// admit checks an entry's header against the limits and the layer format
// and returns its cleaned name. skip says the entry adds nothing to the tree.
func (a *applier) admit(hdr *tar.Header) (name string, skip bool, err error) {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return "", true, nil
	}
	if a.entries++; a.cfg.maxEntries > 0 && a.entries > a.cfg.maxEntries {
		return "", false, refuse("more entries than the limit of " + strconv.Itoa(a.cfg.maxEntries))
	}
	if err := a.reserve(dataSize(hdr)); err != nil {
		return "", false, err
	}
	name, err = layerName(hdr.Name)
	switch {
	case err != nil:
		return "", false, err
	case name == "." && hdr.Typeflag != tar.TypeDir:
		return "", false, refuse("the root is not a directory")
	case name == ".":
		return "", true, nil
	}
	if err := checkComponents(name); err != nil {
		return "", false, err
	}
	if a.names[name].entry != 0 {
		return "", false, refuse("duplicate entry")
	}
	st := a.names[name]
	st.entry = markerType(name, hdr.Typeflag)
	a.names[name] = st
	return name, false, nil
}

// markerType is the type recorded for an entry: 'w' for markers, whatever
// their tar type, and the tar type otherwise.
func markerType(name string, typ byte) byte {
	if isReserved(baseOf(name)) {
		return 'w'
	}
	return typ
}

// reserve counts n more bytes of content against the size limit.
func (a *applier) reserve(n int64) error {
	a.written += n
	if a.cfg.maxSize > 0 && a.written > a.cfg.maxSize {
		return refuse("content larger than the limit of " + strconv.FormatInt(a.cfg.maxSize, 10) + " bytes")
	}
	return nil
}

// dataSize returns the size of the data that follows hdr in the archive.
func dataSize(hdr *tar.Header) int64 {
	switch hdr.Typeflag {
	case tar.TypeLink, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
		return 0
	}
	return hdr.Size
}

// layerName checks the name of an archive entry (or a hard link's target)
// and returns it cleaned and unrooted, "." for the root.
func layerName(raw string) (string, error) {
	switch {
	case raw == "":
		return "", refuse("empty name")
	case strings.IndexByte(raw, 0) >= 0:
		return "", refuse("NUL byte in name")
	case strings.HasPrefix(raw, "/"):
		return "", refuse("absolute name")
	}
	for c := range strings.SplitSeq(raw, "/") {
		if c == ".." {
			return "", refuse(`name climbs out of the root with ".."`)
		}
		if len(c) > maxNameLen {
			return "", refuse("name component longer than 255 bytes")
		}
	}
	return path.Clean(raw), nil
}

// checkComponents refuses a name with a whiteout as a directory: only the
// last component may be a marker. The overlay's and other tools' internal
// names (".wh..wh.") are allowed anywhere.
func checkComponents(name string) error {
	dir := parentOf(name)
	if dir == "." {
		return nil
	}
	for c := range strings.SplitSeq(dir, "/") {
		if isReserved(c) && !strings.HasPrefix(c, internalPrefix) {
			return refuse("entry beneath a whiteout")
		}
	}
	return nil
}

// checkSymlink refuses a symlink whose relative target climbs out of the
// root. An absolute target is fine: it is resolved inside the root, as in a
// container.
func checkSymlink(name, target string) error {
	switch {
	case target == "":
		return refuse("empty symlink target")
	case strings.IndexByte(target, 0) >= 0:
		return refuse("NUL byte in symlink target")
	case path.IsAbs(target):
		return nil
	}
	if p := path.Join(parentOf(name), target); p == ".." || strings.HasPrefix(p, "../") {
		return refuse("symlink target leaves the root")
	}
	return nil
}

// parents makes sure every ancestor of name is a directory in dst, creating
// missing ones (mode 0755) and replacing a non-directory that a lower layer
// left there. An ancestor that this layer holds as a non-directory, or whites
// out, makes the entry invalid. Ancestors from an internal name on are left
// alone.
func (a *applier) parents(name string) error {
	dir := parentOf(name)
	if dir == "." {
		return nil
	}
	p := "."
	for c := range strings.SplitSeq(dir, "/") {
		if strings.HasPrefix(c, internalPrefix) {
			return nil
		}
		p = join(p, c)
		if err := a.parent(p); err != nil {
			return err
		}
	}
	return nil
}

// parent makes sure the ancestor p is a directory in dst.
func (a *applier) parent(p string) error {
	st := a.names[p]
	switch {
	case st.entry == tar.TypeSymlink:
		return refuse("entry beneath a symlink of the same layer: " + p)
	case st.entry != 0 && st.entry != tar.TypeDir:
		return refuse("entry beneath a non-directory of the same layer: " + p)
	case st.whited:
		return refuse("entry beneath a name the same layer whites out: " + p)
	case st.kept:
		return nil
	}
	exists, err := replaceName(a.dst, p, true)
	if err == nil && !exists {
		err = a.dst.mkdir(p, 0o755)
	}
	if err != nil {
		return err
	}
	st.kept = true
	a.names[p] = st
	return nil
}

// internalDir returns the topmost internal directory (".wh..wh.") that name
// lies beneath, such as aufs's metadata directories, if there is one.
func internalDir(name string) (string, bool) {
	found, ok := "", false
	for dir := parentOf(name); dir != "."; dir = parentOf(dir) {
		if strings.HasPrefix(baseOf(dir), internalPrefix) {
			found, ok = dir, true
		}
	}
	return found, ok
}

// claim records that the layer puts name in dst, refusing an entry that
// contradicts earlier ones.
func (a *applier) claim(name string, typ byte) error {
	st := a.names[name]
	switch {
	case st.whited:
		return refuse("entry for a name the same layer whites out")
	case st.kept && typ != tar.TypeDir:
		return refuse("non-directory where earlier entries of the same layer need a directory")
	}
	st.kept = true
	a.names[name] = st
	return nil
}

// whiteout deletes target, which a lower layer may hold.
func (a *applier) whiteout(target string) error {
	if base := baseOf(target); base == "" || base == "." || base == ".." {
		return refuse("whiteout of an invalid name")
	}
	st := a.names[target]
	if st.kept || st.entry != 0 {
		return refuse("whiteout of a name the same layer holds")
	}
	st.whited = true
	a.names[target] = st
	return a.dst.removeAll(target)
}

// clearDir deletes what dst holds in the directory dir, except the names
// this layer put there; in the layer's own subdirectories it goes on
// deleting what the lower layers left.
func (a *applier) clearDir(dir string) error {
	list, err := a.dst.readDir(dir)
	if err != nil {
		return err
	}
	for _, fi := range list {
		p := join(dir, fi.Name())
		switch st := a.names[p]; {
		case st.kept && fi.IsDir():
			err = a.clearDir(p)
		case !st.kept:
			err = a.dst.removeAll(p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// create applies an entry that adds name to the tree.
func (a *applier) create(name string, hdr *tar.Header, data io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeDir:
		return a.mkdir(name, hdr)
	case tar.TypeReg, tar.TypeCont, tar.TypeGNUSparse:
		return a.writeFile(name, hdr.FileInfo(), data)
	case tar.TypeSymlink:
		return a.symlink(name, hdr)
	case tar.TypeLink:
		return a.hardlink(name, hdr)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return unsupported("device files and FIFOs cannot be created through afero")
	}
	return refuse("unknown entry type " + strconv.QuoteRune(rune(hdr.Typeflag)))
}

// mkdir applies a directory entry. An existing directory is kept, so that
// the lower contents merge; anything else there is replaced.
func (a *applier) mkdir(name string, hdr *tar.Header) error {
	exists, err := replaceName(a.dst, name, true)
	if err == nil && !exists {
		err = a.dst.mkdir(name, 0o700)
	}
	if err != nil {
		return err
	}
	info := hdr.FileInfo()
	if err := setOwner(a.dst, name, info); err != nil {
		return err
	}
	a.dirs = append(a.dirs, dirAttrs{name: name, info: info})
	return nil
}

// writeFile creates name as a regular file with the content of data and the
// attributes of info, replacing whatever dst had there.
func (a *applier) writeFile(name string, info fs.FileInfo, data io.Reader) error {
	if _, err := replaceName(a.dst, name, false); err != nil {
		return err
	}
	f, err := a.dst.open(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return errTruncated
	}
	if err != nil {
		return err
	}
	return setAttrs(a.dst, name, info)
}

// symlink applies a symlink entry; the target is stored verbatim.
func (a *applier) symlink(name string, hdr *tar.Header) error {
	if err := checkSymlink(name, hdr.Linkname); err != nil {
		return err
	}
	if _, err := replaceName(a.dst, name, false); err != nil {
		return err
	}
	if err := a.dst.symlink(hdr.Linkname, name); err != nil {
		if errors.Is(err, afero.ErrNoSymlink) {
			return errNoSymlinkDst
		}
		return err
	}
	return setAttrs(a.dst, name, hdr.FileInfo())
}

// hardlink applies a hard link as a copy of its target, which must be an
// earlier regular file of the same layer.
func (a *applier) hardlink(name string, hdr *tar.Header) error {
	target, err := a.linkTarget(hdr)
	if err != nil {
		return err
	}
	info, err := a.dst.lstat(target)
	if err != nil {
		return err
	}
	if err := a.reserve(info.Size()); err != nil {
		return err
	}
	src, err := a.dst.open(target, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer src.Close() // best effort: the source was only read
	return a.writeFile(name, info, src)
}

// linkTarget returns the cleaned target of a hard link, refusing anything
// but an earlier regular file of the same layer.
func (a *applier) linkTarget(hdr *tar.Header) (string, error) {
	target, err := layerName(hdr.Linkname)
	if err != nil {
		return "", &refusal{msg: "hard link target", cause: err}
	}
	if err := checkLinkTarget(target, a.names[target].entry); err != nil {
		return "", err
	}
	return target, nil
}

// checkLinkTarget refuses a hard link to target, an entry of the given tar
// type (0 for none), unless it is a regular file outside any marker or
// internal directory.
func checkLinkTarget(target string, typ byte) error {
	_, internal := internalDir(target)
	switch typ {
	case tar.TypeReg, tar.TypeCont, tar.TypeGNUSparse:
		if !internal {
			return nil
		}
	}
	return refuse("hard link to " + strconv.Quote(target) + ", which is not an earlier regular file of the same layer")
}

// validate checks an entry that is not applied (beneath another tool's
// metadata) as the entries that are, so that the same archives are refused
// whether applied or opened with NewTarFs.
func (a *applier) validate(name string, hdr *tar.Header) error {
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		return checkSymlink(name, hdr.Linkname)
	case tar.TypeLink:
		_, err := a.linkTarget(hdr)
		return err
	case tar.TypeDir, tar.TypeReg, tar.TypeCont, tar.TypeGNUSparse, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return nil
	}
	return refuse("unknown entry type " + strconv.QuoteRune(rune(hdr.Typeflag)))
}

// finish gives the directory entries their modes and times, deepest last
// created first.
func (a *applier) finish() error {
	for i := len(a.dirs) - 1; i >= 0; i-- {
		d := a.dirs[i]
		if err := a.dst.fs.Chmod(a.dst.path(d.name), d.info.Mode()&modeBits); err != nil {
			return &LayerError{Entry: d.name, Err: errnoOf(err)}
		}
		if err := a.dst.setTimes(d.name, d.info); err != nil {
			return &LayerError{Entry: d.name, Err: errnoOf(err)}
		}
	}
	return nil
}
