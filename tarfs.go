package overlay

import (
	"archive/tar"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/afero"
)

// TarFs is a read-only afero.Fs over an uncompressed layer tar, read in
// place: NewTarFs indexes the archive once, and files are then read through
// the io.ReaderAt, so memory grows with the number of entries, not with their
// size. Whiteouts and opaque markers stay the ".wh." files they are, so a
// TarFs given to New as a lower layer is honoured as the image layer it is:
// an image's layer tars stack directly as lowers.
//
// Names are cleaned and may be rooted or not ("/a/b" is "a/b"). Symlinks are
// followed inside the archive as in a chroot, so Stat and Open resolve them
// and LstatIfPossible does not. Directories that entries imply but the
// archive does not hold have mode 0755 and the Unix epoch as mtime. A hard
// link is the file it links to.
//
// A TarFs is safe for concurrent use if its io.ReaderAt is, as the
// io.ReaderAt contract requires. Every change fails with EROFS.
type TarFs struct {
	r     io.ReaderAt
	nodes map[string]*tarNode // by cleaned, unrooted name; "." is the root
}

var (
	_ afero.Fs         = (*TarFs)(nil)
	_ afero.Lstater    = (*TarFs)(nil)
	_ afero.LinkReader = (*TarFs)(nil)
)

// tarNode is one name of the archive.
type tarNode struct {
	name     string      // the base name, "/" for the root
	mode     fs.FileMode // type and permission bits
	size     int64
	offset   int64 // where a regular file's content starts in the archive
	mtime    time.Time
	uid, gid int
	link     string   // a symlink's target
	children []string // a directory's entries, sorted
	implicit bool     // a directory that only the entries beneath it imply
}

// epoch is the modification time of the directories a layer implies without
// an entry of their own.
var epoch = time.Unix(0, 0).UTC()

// NewTarFs indexes the layer tar of the given size that r holds and returns
// a read-only file system over it. The archive must be uncompressed: gzip
// offers no random access, so a gzipped layer (as image registries serve
// them) must be decompressed first, for example into a temporary file;
// NewTarFs recognises compressed input by its magic bytes and refuses it.
//
// The archive is checked as ApplyLayer checks it: names that are absolute
// or hold "..", symlink targets that climb out of the root, hard links to
// anything but an earlier regular file, entries beneath a symlink or a file,
// duplicate names, a whiteout of a name the archive holds, sparse files and a
// missing end-of-archive marker are refused. If there is an error, it will
// be of type [*LayerError].
func NewTarFs(r io.ReaderAt, size int64) (*TarFs, error) {
	magic := make([]byte, len(xzMagic))
	n, _ := r.ReadAt(magic, 0) // a short archive is the tar reader's to refuse
	if err := compressedErr(magic[:n]); err != nil {
		return nil, &LayerError{Err: err}
	}
	t := &TarFs{r: r, nodes: map[string]*tarNode{".": impliedDir("/")}}
	if err := t.index(io.NewSectionReader(r, 0, size)); err != nil {
		return nil, err
	}
	for _, n := range t.nodes {
		slices.Sort(n.children)
	}
	return t, nil
}

// impliedDir returns the node of a directory that entries imply.
func impliedDir(name string) *tarNode {
	return &tarNode{name: name, mode: fs.ModeDir | 0o755, mtime: epoch, implicit: true}
}

// index reads the archive's headers, skipping the content.
func (t *TarFs) index(sr *io.SectionReader) error {
	tr := tar.NewReader(sr)
	var end int64
	var whiteouts []string
	for {
		hdr, err := tr.Next()
		pos, _ := sr.Seek(0, io.SeekCurrent) // a SectionReader's Seek cannot fail here
		if err == io.EOF {
			if !hasTrailer(end, pos) {
				return &LayerError{Err: errTruncated}
			}
			break
		}
		if err != nil {
			return &LayerError{Err: archiveErr(err)}
		}
		if end = pos + dataSize(hdr); end > sr.Size() {
			return &LayerError{Entry: hdr.Name, Err: errTruncated}
		}
		name, err := t.add(hdr, pos)
		if err != nil {
			return &LayerError{Entry: hdr.Name, Err: err}
		}
		if h, ok := hiddenName(baseOf(name)); ok {
			whiteouts = append(whiteouts, join(parentOf(name), h))
		}
	}
	return t.checkWhiteouts(whiteouts)
}

// checkWhiteouts refuses a whiteout of a name the archive holds.
func (t *TarFs) checkWhiteouts(hidden []string) error {
	for _, h := range hidden {
		if b := baseOf(h); b == "" || b == "." || b == ".." {
			return &LayerError{Entry: whiteoutPath(h), Err: refuse("whiteout of an invalid name")}
		}
		if t.nodes[h] != nil {
			return &LayerError{Entry: whiteoutPath(h), Err: refuse("whiteout of a name the same layer holds")}
		}
	}
	return nil
}

// add indexes one entry whose content starts at offset off, and returns its
// cleaned name.
func (t *TarFs) add(hdr *tar.Header, off int64) (string, error) {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return ".", nil
	}
	name, err := layerName(hdr.Name)
	switch {
	case err != nil:
		return "", err
	case name == "." && hdr.Typeflag != tar.TypeDir:
		return "", refuse("the root is not a directory")
	case name == ".":
		t.nodes["."] = headerNode(hdr, "/", off)
		return name, nil
	}
	if err := checkComponents(name); err != nil {
		return "", err
	}
	n, err := t.newNode(name, hdr, off)
	if err != nil {
		return "", err
	}
	return name, t.place(name, n)
}

// newNode builds the node for the entry name.
func (t *TarFs) newNode(name string, hdr *tar.Header, off int64) (*tarNode, error) {
	if isReserved(baseOf(name)) {
		return &tarNode{name: baseOf(name), mode: fs.FileMode(hdr.Mode).Perm(), mtime: hdr.ModTime}, nil
	}
	switch hdr.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeCont, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	case tar.TypeSymlink:
		if err := checkSymlink(name, hdr.Linkname); err != nil {
			return nil, err
		}
	case tar.TypeLink:
		return t.hardlink(name, hdr)
	case tar.TypeGNUSparse:
		return nil, unsupported("sparse files cannot be read in place")
	default:
		return nil, refuse("unknown entry type " + strconv.QuoteRune(rune(hdr.Typeflag)))
	}
	if isSparse(hdr) {
		return nil, unsupported("sparse files cannot be read in place")
	}
	return headerNode(hdr, baseOf(name), off), nil
}

// isSparse reports whether a PAX header describes a sparse file.
func isSparse(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// hardlink returns the node of a hard link: its target's, under its own name.
func (t *TarFs) hardlink(name string, hdr *tar.Header) (*tarNode, error) {
	target, err := layerName(hdr.Linkname)
	if err != nil {
		return nil, &refusal{msg: "hard link target", cause: err}
	}
	n := t.nodes[target]
	typ := byte(0)
	if n != nil && n.mode.IsRegular() && !isReserved(baseOf(target)) {
		typ = tar.TypeReg
	}
	if err := checkLinkTarget(target, typ); err != nil {
		return nil, err
	}
	c := *n
	c.name = baseOf(name)
	return &c, nil
}

// headerNode builds a node from an entry's header.
func headerNode(hdr *tar.Header, base string, off int64) *tarNode {
	info := hdr.FileInfo()
	n := &tarNode{
		name:  base,
		mode:  info.Mode() &^ fs.ModeType,
		mtime: hdr.ModTime,
		uid:   hdr.Uid,
		gid:   hdr.Gid,
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		n.mode |= fs.ModeDir
	case tar.TypeSymlink:
		n.mode |= fs.ModeSymlink
		n.link = hdr.Linkname
	case tar.TypeChar:
		n.mode |= fs.ModeDevice | fs.ModeCharDevice
	case tar.TypeBlock:
		n.mode |= fs.ModeDevice
	case tar.TypeFifo:
		n.mode |= fs.ModeNamedPipe
	default:
		n.size, n.offset = hdr.Size, off
	}
	return n
}

// place puts the node n at name, creating the directories it implies. An
// explicit directory entry may follow the entries it implies.
func (t *TarFs) place(name string, n *tarNode) error {
	old := t.nodes[name]
	switch {
	case old != nil && !old.implicit:
		return refuse("duplicate entry")
	case old != nil && !n.mode.IsDir():
		return refuse("non-directory where earlier entries need a directory")
	case old != nil:
		n.children = old.children
		t.nodes[name] = n
		return nil
	}
	if err := t.ensureDir(parentOf(name)); err != nil {
		return err
	}
	t.nodes[name] = n
	parent := t.nodes[parentOf(name)]
	parent.children = append(parent.children, n.name)
	return nil
}

// ensureDir makes sure dir is a directory of the index, implying it and its
// missing parents.
func (t *TarFs) ensureDir(dir string) error {
	n := t.nodes[dir]
	switch {
	case n == nil:
		if err := t.ensureDir(parentOf(dir)); err != nil {
			return err
		}
		t.nodes[dir] = impliedDir(baseOf(dir))
		parent := t.nodes[parentOf(dir)]
		parent.children = append(parent.children, baseOf(dir))
		return nil
	case n.mode&fs.ModeSymlink != 0:
		return refuse("entry beneath a symlink: " + dir)
	case !n.mode.IsDir():
		return refuse("entry beneath a non-directory: " + dir)
	}
	return nil
}

// Name returns the name of this file system, "TarFs".
func (t *TarFs) Name() string { return "TarFs" }

// Open opens the named file or directory for reading, following symlinks.
// If there is an error, it will be of type [*fs.PathError].
func (t *TarFs) Open(name string) (afero.File, error) {
	return t.OpenFile(name, os.O_RDONLY, 0)
}

// OpenFile opens the named file for reading; any flag asking to write or
// create fails with EROFS. With O_NOFOLLOW a final symlink is ELOOP.
// If there is an error, it will be of type [*fs.PathError].
func (t *TarFs) OpenFile(name string, flag int, _ os.FileMode) (afero.File, error) {
	if flag&(os.O_WRONLY|os.O_RDWR|os.O_CREATE|os.O_TRUNC) != 0 {
		return nil, roErr("open", name)
	}
	f, err := t.open(name, flag&syscall.O_NOFOLLOW == 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return f, nil
}

// open is OpenFile's worker.
func (t *TarFs) open(name string, follow bool) (*tarFile, error) {
	p, n, err := t.resolve(name, follow)
	switch {
	case err != nil:
		return nil, err
	case n.mode&fs.ModeSymlink != 0:
		return nil, syscall.ELOOP
	}
	f := &tarFile{t: t, name: name, path: p, node: n}
	if n.mode.IsRegular() {
		f.sr = io.NewSectionReader(t.r, n.offset, n.size)
	}
	return f, nil
}

// Stat describes the named file, following symlinks.
// If there is an error, it will be of type [*fs.PathError].
func (t *TarFs) Stat(name string) (os.FileInfo, error) {
	_, n, err := t.resolve(name, true)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	return tarInfo{n}, nil
}

// LstatIfPossible describes the named file without following a final
// symlink; the boolean is always true.
// If there is an error, it will be of type [*fs.PathError].
func (t *TarFs) LstatIfPossible(name string) (os.FileInfo, bool, error) {
	_, n, err := t.resolve(name, false)
	if err != nil {
		return nil, true, &fs.PathError{Op: "lstat", Path: name, Err: err}
	}
	return tarInfo{n}, true, nil
}

// ReadlinkIfPossible returns the target of the named symlink, verbatim.
// If there is an error, it will be of type [*fs.PathError].
func (t *TarFs) ReadlinkIfPossible(name string) (string, error) {
	_, n, err := t.resolve(name, false)
	if err == nil && n.mode&fs.ModeSymlink == 0 {
		err = syscall.EINVAL
	}
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: err}
	}
	return n.link, nil
}

// Create fails with EROFS.
func (t *TarFs) Create(name string) (afero.File, error) { return nil, roErr("open", name) }

// Mkdir fails with EROFS.
func (t *TarFs) Mkdir(name string, _ os.FileMode) error { return roErr("mkdir", name) }

// MkdirAll fails with EROFS.
func (t *TarFs) MkdirAll(name string, _ os.FileMode) error { return roErr("mkdir", name) }

// Remove fails with EROFS.
func (t *TarFs) Remove(name string) error { return roErr("remove", name) }

// RemoveAll fails with EROFS.
func (t *TarFs) RemoveAll(name string) error { return roErr("RemoveAll", name) }

// Rename fails with EROFS. The error is of type [*os.LinkError].
func (t *TarFs) Rename(oldname, newname string) error {
	return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: syscall.EROFS}
}

// Chmod fails with EROFS.
func (t *TarFs) Chmod(name string, _ os.FileMode) error { return roErr("chmod", name) }

// Chown fails with EROFS.
func (t *TarFs) Chown(name string, _, _ int) error { return roErr("chown", name) }

// Chtimes fails with EROFS.
func (t *TarFs) Chtimes(name string, _, _ time.Time) error { return roErr("chtimes", name) }

// roErr is the error of every change to a TarFs.
func roErr(op, name string) error {
	return &fs.PathError{Op: op, Path: name, Err: syscall.EROFS}
}

// resolve finds the node that name shows, following symlinks in the middle,
// and the last one if follow is set, inside the archive as in a chroot.
func (t *TarFs) resolve(name string, follow bool) (string, *tarNode, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", nil, syscall.EINVAL
	}
	p := cleanTarName(name)
	for links := 0; ; links++ {
		if links > maxSymlinks {
			return "", nil, syscall.ELOOP
		}
		if n := t.nodes[p]; n != nil {
			if !follow || n.mode&fs.ModeSymlink == 0 {
				return p, n, nil
			}
			p = linkTarget(parentOf(p), n.link)
			continue
		}
		anc := parentOf(p)
		for t.nodes[anc] == nil {
			anc = parentOf(anc)
		}
		a := t.nodes[anc]
		switch {
		case a.mode&fs.ModeSymlink != 0:
			p = cleanTarName(linkTarget(parentOf(anc), a.link) + p[len(anc):])
		case a.mode.IsDir():
			return "", nil, syscall.ENOENT
		default:
			return "", nil, syscall.ENOTDIR
		}
	}
}

// cleanTarName cleans a caller's name: unrooted, "." for the root, and ".."
// never climbs above the root.
func cleanTarName(name string) string {
	if p := path.Clean("/" + name)[1:]; p != "" {
		return p
	}
	return "."
}

// linkTarget resolves a symlink target found in dir, inside the root.
func linkTarget(dir, target string) string {
	if path.IsAbs(target) {
		return cleanTarName(target)
	}
	return cleanTarName(dir + "/" + target)
}

// tarInfo describes a node. Sys returns a *tar.Header with its owner.
type tarInfo struct{ n *tarNode }

func (fi tarInfo) Name() string       { return fi.n.name }
func (fi tarInfo) Size() int64        { return fi.n.size }
func (fi tarInfo) Mode() fs.FileMode  { return fi.n.mode }
func (fi tarInfo) ModTime() time.Time { return fi.n.mtime }
func (fi tarInfo) IsDir() bool        { return fi.n.mode.IsDir() }

// Sys returns a *tar.Header describing the node, owner included.
func (fi tarInfo) Sys() any { return nodeHeader(fi.n) }

// nodeHeader returns a tar header describing n.
func nodeHeader(n *tarNode) *tar.Header {
	h := &tar.Header{
		Name:     n.name,
		Mode:     tarMode(n.mode),
		Uid:      n.uid,
		Gid:      n.gid,
		ModTime:  n.mtime,
		Typeflag: tarType(n.mode),
		Linkname: n.link,
	}
	if h.Typeflag == tar.TypeReg {
		h.Size = n.size
	}
	return h
}

// tarFile is an open file or directory of a TarFs.
type tarFile struct {
	t    *TarFs
	name string // as the caller passed it
	path string // the resolved name
	node *tarNode

	mu     sync.Mutex        // guards the fields below
	sr     *io.SectionReader // a regular file's content
	pos    int               // a directory's listing position
	closed bool
}

var _ afero.File = (*tarFile)(nil)

// Name returns the name as passed to Open.
func (f *tarFile) Name() string { return f.name }

// Close closes the file; closing twice is an error wrapping os.ErrClosed.
func (f *tarFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return f.errf("close", os.ErrClosed)
	}
	f.closed = true
	return nil
}

// Read reads from a regular file; a directory gives EISDIR.
func (f *tarFile) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("read"); err != nil {
		return 0, err
	}
	return f.sr.Read(p)
}

// ReadAt reads from a regular file at offset off.
func (f *tarFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("read"); err != nil {
		return 0, err
	}
	return f.sr.ReadAt(p, off)
}

// Seek sets the offset of a regular file. On a directory, seeking to the
// start rewinds the listing.
func (f *tarFile) Seek(offset int64, whence int) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return 0, f.errf("seek", os.ErrClosed)
	case f.node.mode.IsDir():
		if offset == 0 && whence == io.SeekStart {
			f.pos = 0
		}
		return 0, nil
	case f.sr == nil:
		return 0, nil // a device or FIFO has no content here
	}
	return f.sr.Seek(offset, whence)
}

// check returns the error for reading this handle, if any. The caller
// holds f.mu. A device or FIFO reads as empty.
func (f *tarFile) check(op string) error {
	switch {
	case f.closed:
		return f.errf(op, os.ErrClosed)
	case f.node.mode.IsDir():
		return f.errf(op, syscall.EISDIR)
	case f.sr == nil:
		f.sr = io.NewSectionReader(f.t.r, 0, 0)
	}
	return nil
}

// Write fails with EBADF: the file is read-only.
func (f *tarFile) Write([]byte) (int, error) { return 0, f.errf("write", syscall.EBADF) }

// WriteAt fails with EBADF.
func (f *tarFile) WriteAt([]byte, int64) (int, error) { return 0, f.errf("write", syscall.EBADF) }

// WriteString fails with EBADF.
func (f *tarFile) WriteString(string) (int, error) { return 0, f.errf("write", syscall.EBADF) }

// Truncate fails with EINVAL, as ftruncate on a read-only descriptor does.
func (f *tarFile) Truncate(int64) error { return f.errf("truncate", syscall.EINVAL) }

// Sync does nothing.
func (f *tarFile) Sync() error { return nil }

// Stat describes the file.
func (f *tarFile) Stat() (os.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, f.errf("stat", os.ErrClosed)
	}
	return tarInfo{f.node}, nil
}

// Readdir returns the directory's entries in name order: n > 0 returns at
// most n and then a bare io.EOF; n <= 0 returns the rest and nil.
func (f *tarFile) Readdir(n int) ([]os.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return nil, f.errf("readdirent", os.ErrClosed)
	case !f.node.mode.IsDir():
		return nil, f.errf("readdirent", syscall.ENOTDIR)
	}
	return f.next(n)
}

// next returns up to n entries (all if n <= 0) from the listing position.
// The caller holds f.mu.
func (f *tarFile) next(n int) ([]os.FileInfo, error) {
	rest := f.node.children[f.pos:]
	if n > 0 && len(rest) == 0 {
		return nil, io.EOF
	}
	if n > 0 {
		rest = rest[:min(n, len(rest))]
	}
	f.pos += len(rest)
	list := make([]os.FileInfo, len(rest))
	for i, c := range rest {
		list[i] = tarInfo{f.t.nodes[join(f.path, c)]}
	}
	return list, nil
}

// Readdirnames returns the names Readdir would return.
func (f *tarFile) Readdirnames(n int) ([]string, error) {
	list, err := f.Readdir(n)
	names := make([]string, len(list))
	for i, fi := range list {
		names[i] = fi.Name()
	}
	return names, err
}

// ReadDir returns the entries Readdir would return, as fs.DirEntry values.
func (f *tarFile) ReadDir(n int) ([]fs.DirEntry, error) {
	list, err := f.Readdir(n)
	entries := make([]fs.DirEntry, len(list))
	for i, fi := range list {
		entries[i] = fs.FileInfoToDirEntry(fi)
	}
	return entries, err
}

// errf labels err with op and the handle's name.
func (f *tarFile) errf(op string, err error) error {
	return &fs.PathError{Op: op, Path: f.name, Err: err}
}
