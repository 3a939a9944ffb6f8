package overlay

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/afero"
	"golang.org/x/sys/unix"
)

// lowerTime is the mtime given to every entry of every built layer, so that
// a preserved lower timestamp can be told apart from a fresh one.
var lowerTime = time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)

// specKind says what a layer spec entry is.
type specKind int

const (
	specKindFile specKind = iota
	specKindDir
	specKindSymlink
)

// specEntry describes one entry of a layer. Data is a file's content or a
// symlink's target. Mode holds the permission bits, including os.ModeSetuid,
// os.ModeSetgid and os.ModeSticky; zero means 0644 for files and 0755 for
// directories, and it is ignored for symlinks.
type specEntry struct {
	Kind specKind
	Data string
	Mode fs.FileMode
}

// layerSpec declares the content of one layer: it maps slash-separated
// relative paths ("a/b") to entries. OCI whiteouts ("dir/.wh.name") and
// opaque markers ("dir/.wh..wh..opq") are plain keys, best written with whKey
// and opqKey; their entries are ignored. Parents missing from the map are
// implied directories with mode 0755.
type layerSpec map[string]specEntry

// Names and xattrs of the two whiteout formats.
const (
	specWhPrefix      = ".wh."
	specOpqName       = ".wh..wh..opq"
	kernelOpaqueXattr = "trusted.overlay.opaque"
	specDirMode       = 0o755
	specFileMode      = 0o644
	specImpliedKey    = "(implied parent)"
)

// specFile returns a regular file entry.
func specFile(data string, mode fs.FileMode) specEntry {
	return specEntry{Kind: specKindFile, Data: data, Mode: mode}
}

// specDir returns a directory entry.
func specDir(mode fs.FileMode) specEntry {
	return specEntry{Kind: specKindDir, Mode: mode}
}

// specLink returns a symlink entry whose target is stored verbatim.
func specLink(target string) specEntry {
	return specEntry{Kind: specKindSymlink, Data: target}
}

// specMarker is the value conventionally stored under whKey and opqKey keys.
var specMarker = specEntry{Kind: specKindFile}

// whKey returns the OCI whiteout key that hides the lower entry at p.
func whKey(p string) string {
	dir, base := path.Split(p)
	return dir + specWhPrefix + base
}

// opqKey returns the OCI opaque marker key that makes directory dir opaque.
func opqKey(dir string) string {
	return path.Join(dir, specOpqName)
}

// specItemKind says whether a specItem is an entry, a whiteout or an opaque marker.
type specItemKind int

const (
	specItemEntry specItemKind = iota
	specItemWhiteout
	specItemOpaque
)

// specItem is one element of a normalized layer spec. Path is the entry's
// path, the whited-out path for a whiteout, or the directory's path for an
// opaque marker; Key is the layerSpec key it came from (the OCI name).
type specItem struct {
	Path  string
	Key   string
	Kind  specItemKind
	Entry specEntry
}

// items normalizes s: it adds implied parent directories, resolves default
// modes, classifies OCI markers and sorts parents before their children.
// It panics on specs that cannot exist on disk, which are harness bugs.
func (s layerSpec) items() []specItem {
	byPath := map[string]specItem{}
	add := func(it specItem) {
		old, ok := byPath[it.Path]
		switch {
		case !ok:
			byPath[it.Path] = it
		case it.Key == specImpliedKey:
			// Keep what is already declared.
		case old.Key == specImpliedKey:
			byPath[it.Path] = it
		default:
			panic(fmt.Sprintf("layer spec: %q and %q both describe %q", old.Key, it.Key, it.Path))
		}
	}
	for key, e := range s {
		key = strings.Trim(path.Clean(key), "/")
		if key == "." || key == "" {
			panic("layer spec: the root is not an entry")
		}
		dir, base := path.Split(key)
		dir = strings.TrimSuffix(dir, "/")
		for p := dir; p != "" && p != "."; p = path.Dir(p) {
			add(specItem{Path: p, Key: specImpliedKey, Kind: specItemEntry, Entry: specDir(specDirMode)})
		}
		switch {
		case base == specOpqName:
			if dir == "" {
				panic("layer spec: the root cannot be opaque")
			}
			// Opaque markers are kept apart: their path is their directory's.
			byPath[key] = specItem{Path: dir, Key: key, Kind: specItemOpaque}
		case strings.HasPrefix(base, specWhPrefix):
			add(specItem{Path: path.Join(dir, strings.TrimPrefix(base, specWhPrefix)), Key: key, Kind: specItemWhiteout})
		default:
			if e.Mode == 0 && e.Kind == specKindDir {
				e.Mode = specDirMode
			} else if e.Mode == 0 && e.Kind == specKindFile {
				e.Mode = specFileMode
			}
			add(specItem{Path: key, Key: key, Kind: specItemEntry, Entry: e})
		}
	}
	out := make([]specItem, 0, len(byPath))
	for k, it := range byPath {
		if it.Kind == specItemOpaque {
			d, ok := byPath[it.Path]
			if !ok || d.Kind != specItemEntry || d.Entry.Kind != specKindDir {
				panic(fmt.Sprintf("layer spec: opaque marker %q without a directory", it.Key))
			}
		}
		if p := path.Dir(it.Path); it.Kind != specItemOpaque && p != "." {
			if d := byPath[p]; d.Kind != specItemEntry || d.Entry.Kind != specKindDir {
				panic(fmt.Sprintf("layer spec: %q lives under non-directory %q", k, p))
			}
		}
		out = append(out, it)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Kind < out[j].Kind
	})
	return out
}

// hasSymlinks reports whether s holds a symlink, which MemMapFs cannot store.
func (s layerSpec) hasSymlinks() bool {
	for _, e := range s {
		if e.Kind == specKindSymlink {
			return true
		}
	}
	return false
}

// String lists s one sorted line per key, for failure messages.
func (s layerSpec) String() string {
	if len(s) == 0 {
		return "    (empty)\n"
	}
	var b strings.Builder
	for _, it := range s.items() {
		fmt.Fprintf(&b, "    %s\n", it)
	}
	return b.String()
}

// String describes one item in the notation of layerSpec.String.
func (it specItem) String() string {
	switch it.Kind {
	case specItemWhiteout:
		return it.Key + " (whiteout of " + it.Path + ")"
	case specItemOpaque:
		return it.Key + " (opaque marker)"
	}
	e := it.Entry
	switch e.Kind {
	case specKindDir:
		return fmt.Sprintf("%s/ dir %s", it.Path, permOctal(e.Mode))
	case specKindSymlink:
		return fmt.Sprintf("%s -> %q", it.Path, e.Data)
	default:
		return fmt.Sprintf("%s file %s %q", it.Path, permOctal(e.Mode), e.Data)
	}
}

// permOctal formats the permission bits of m the Unix way, "04755".
func permOctal(m fs.FileMode) string {
	return fmt.Sprintf("%04o", unixPermBits(m))
}

// unixPermBits returns the permission bits of m with setuid, setgid and sticky
// in their Unix positions.
func unixPermBits(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= syscall.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		p |= syscall.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		p |= syscall.S_ISVTX
	}
	return p
}

// diskLayout selects how whiteouts and opaque markers are written to disk.
type diskLayout int

const (
	// layoutKernel writes whiteouts as 0:0 character devices and opaque
	// markers as the trusted.overlay.opaque=y xattr, for the kernel.
	layoutKernel diskLayout = iota
	// layoutOCI writes whiteouts and opaque markers as empty regular files
	// named .wh.NAME and .wh..wh..opq, for the library.
	layoutOCI
)

// writeDiskLayer creates the content of spec under the existing directory
// dir in the given format, then stamps every created entry with lowerTime,
// deepest first, without following symlinks. It fails tb on any error.
func writeDiskLayer(tb harnessTB, dir string, spec layerSpec, format diskLayout) {
	tb.Helper()
	if err := tryWriteDiskLayer(dir, spec, format); err != nil {
		tb.Fatalf("%v", err)
	}
}

// tryWriteDiskLayer is writeDiskLayer returning its error, for callers that
// must tell a missing privilege apart from a failure.
func tryWriteDiskLayer(dir string, spec layerSpec, format diskLayout) error {
	var created []string
	for _, it := range spec.items() {
		p := filepath.Join(dir, filepath.FromSlash(it.Path))
		var err error
		switch {
		case it.Kind == specItemWhiteout && format == layoutKernel:
			err = syscall.Mknod(p, syscall.S_IFCHR, 0)
		case it.Kind == specItemOpaque && format == layoutKernel:
			err = unix.Setxattr(p, kernelOpaqueXattr, []byte("y"), 0)
		case it.Kind != specItemEntry:
			p = filepath.Join(dir, filepath.FromSlash(it.Key))
			err = os.WriteFile(p, nil, specFileMode)
		case it.Entry.Kind == specKindDir:
			if err = os.Mkdir(p, 0o700); err == nil {
				err = os.Chmod(p, it.Entry.Mode)
			}
		case it.Entry.Kind == specKindSymlink:
			err = os.Symlink(it.Entry.Data, p)
		default:
			if err = os.WriteFile(p, []byte(it.Entry.Data), 0o600); err == nil {
				err = os.Chmod(p, it.Entry.Mode)
			}
		}
		if err != nil {
			return fmt.Errorf("building layer %s: %s: %w", dir, it, err)
		}
		if it.Kind != specItemOpaque || format == layoutOCI {
			created = append(created, p)
		}
	}
	return stampDisk(created)
}

// stampDisk sets atime and mtime of paths to lowerTime, deepest first so that
// creating children cannot disturb a parent already stamped.
func stampDisk(paths []string) error {
	sort.SliceStable(paths, func(i, j int) bool {
		return strings.Count(paths[i], "/") > strings.Count(paths[j], "/")
	})
	ts := unix.NsecToTimespec(lowerTime.UnixNano())
	for _, p := range paths {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("stamping %s: %w", p, err)
		}
	}
	return nil
}

// buildMemLayer returns a writable MemMapFs holding spec in OCI format under
// rooted names ("/a/b"), every entry stamped with lowerTime. Specs with
// symlinks cannot be built in memory and fail the test.
func buildMemLayer(tb harnessTB, spec layerSpec) afero.Fs {
	tb.Helper()
	m := afero.NewMemMapFs()
	var created []string
	for _, it := range spec.items() {
		name := "/" + it.Path
		var err error
		switch {
		case it.Kind != specItemEntry:
			name = "/" + it.Key
			err = afero.WriteFile(m, name, nil, specFileMode)
		case it.Entry.Kind == specKindDir:
			if err = m.Mkdir(name, it.Entry.Mode); err == nil {
				err = m.Chmod(name, it.Entry.Mode)
			}
		case it.Entry.Kind == specKindSymlink:
			tb.Fatalf("building memory layer: %s: MemMapFs has no symlinks", it)
		default:
			if err = afero.WriteFile(m, name, []byte(it.Entry.Data), it.Entry.Mode); err == nil {
				err = m.Chmod(name, it.Entry.Mode)
			}
		}
		if err != nil {
			tb.Fatalf("building memory layer: %s: %v", it, err)
		}
		created = append(created, name)
	}
	sort.SliceStable(created, func(i, j int) bool {
		return strings.Count(created[i], "/") > strings.Count(created[j], "/")
	})
	for _, name := range created {
		if err := m.Chtimes(name, lowerTime, lowerTime); err != nil {
			tb.Fatalf("stamping memory layer %s: %v", name, err)
		}
	}
	return m
}

// ociDiskLower builds spec in OCI format in a fresh directory and returns it
// as a read-only lower layer for the library.
func ociDiskLower(tb harnessTB, spec layerSpec) afero.Fs {
	tb.Helper()
	dir := harnessTempDir(tb)
	writeDiskLayer(tb, dir, spec, layoutOCI)
	return afero.NewReadOnlyFs(afero.NewBasePathFs(afero.NewOsFs(), dir))
}

// ociTarLower builds spec in OCI format as a layer tar, parents first, as
// ExportLayer writes one, and returns it opened with NewTarFs.
func ociTarLower(tb harnessTB, spec layerSpec) afero.Fs {
	tb.Helper()
	dir := harnessTempDir(tb)
	writeDiskLayer(tb, dir, spec, layoutOCI)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		return addTarEntry(tw, p, filepath.ToSlash(strings.TrimPrefix(p, dir+"/")))
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		tb.Fatalf("writing the layer tar: %v", err)
	}
	t, err := NewTarFs(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		tb.Fatalf("NewTarFs: %v", err)
	}
	return t
}

// addTarEntry writes the host file p to tw as name, with its mode, owner,
// times, and content or target.
func addTarEntry(tw *tar.Writer, p, name string) error {
	info, err := os.Lstat(p)
	if err != nil {
		return err
	}
	var target string
	if info.Mode()&fs.ModeSymlink != 0 {
		if target, err = os.Readlink(p); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(info, target)
	if err != nil {
		return err
	}
	hdr.Name, hdr.Format = name, tar.FormatPAX
	if info.IsDir() {
		hdr.Name += "/"
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return nil
	}
	data, err := os.ReadFile(p)
	if err == nil {
		_, err = tw.Write(data)
	}
	return err
}

// ociMemLower builds spec in OCI format in memory and returns it as a
// read-only lower layer for the library.
func ociMemLower(tb harnessTB, spec layerSpec) afero.Fs {
	tb.Helper()
	return afero.NewReadOnlyFs(buildMemLayer(tb, spec))
}

// flattenSpecs merges lower specs, topmost first, the way overlayfs presents
// them, and returns the merged content as a spec without markers: a
// whiteout hides its name, an opaque directory hides the layers below it,
// a non-directory hides what lies below it, and a directory over a
// directory merges the two with the upper one's mode.
func flattenSpecs(lowers ...layerSpec) layerSpec {
	merged := map[string]specEntry{}
	drop := func(p string, self bool) {
		for k := range merged {
			if (self && k == p) || strings.HasPrefix(k, p+"/") {
				delete(merged, k)
			}
		}
	}
	for i := len(lowers) - 1; i >= 0; i-- {
		items := lowers[i].items()
		for _, it := range items {
			switch it.Kind {
			case specItemWhiteout:
				drop(it.Path, true)
			case specItemOpaque:
				drop(it.Path, false)
			}
		}
		for _, it := range items {
			if it.Kind != specItemEntry {
				continue
			}
			old, ok := merged[it.Path]
			if !ok || old.Kind != specKindDir || it.Entry.Kind != specKindDir {
				drop(it.Path, true)
			}
			merged[it.Path] = it.Entry
		}
	}
	return layerSpec(merged)
}

// flatDirFs builds the merged content of lowers (topmost first) as a plain
// writable directory: the cheap oracle that behaves like a mounted overlay
// wherever the overlay keeps POSIX semantics.
func flatDirFs(tb harnessTB, lowers ...layerSpec) afero.Fs {
	tb.Helper()
	dir := harnessTempDir(tb)
	writeDiskLayer(tb, dir, flattenSpecs(lowers...), layoutKernel)
	return newOSDirFs(dir)
}

// osDirFs is an afero.Fs over a host directory. It is afero.BasePathFs over
// afero.OsFs except for symlinks: BasePathFs rewrites a symlink's target into
// a host path (or fails for targets leaving the base), while osDirFs stores
// targets verbatim like the kernel does.
type osDirFs struct {
	afero.Fs
	dir string
}

var _ afero.Symlinker = (*osDirFs)(nil)

// newOSDirFs returns an osDirFs rooted at dir.
func newOSDirFs(dir string) *osDirFs {
	return &osDirFs{Fs: afero.NewBasePathFs(afero.NewOsFs(), dir), dir: dir}
}

// hostPath maps a rooted or relative name to its host path.
func (d *osDirFs) hostPath(name string) string {
	return filepath.Join(d.dir, filepath.FromSlash(path.Clean("/"+name)))
}

// LstatIfPossible returns the host's lstat of name.
func (d *osDirFs) LstatIfPossible(name string) (os.FileInfo, bool, error) {
	fi, err := os.Lstat(d.hostPath(name))
	return fi, true, err
}

// SymlinkIfPossible creates newname pointing verbatim at oldname.
func (d *osDirFs) SymlinkIfPossible(oldname, newname string) error {
	return os.Symlink(oldname, d.hostPath(newname))
}

// ReadlinkIfPossible returns name's target as stored.
func (d *osDirFs) ReadlinkIfPossible(name string) (string, error) {
	return os.Readlink(d.hostPath(name))
}

// harnessTB is the part of testing.TB and *rapid.T that the helpers use.
type harnessTB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// harnessTempDir returns a fresh directory removed when tb ends: tb's own TempDir
// where it has one, or one made by hand (for *rapid.T).
func harnessTempDir(tb harnessTB) string {
	tb.Helper()
	if td, ok := tb.(interface{ TempDir() string }); ok {
		return td.TempDir()
	}
	dir, err := os.MkdirTemp("", "overlay-harness-")
	if err != nil {
		tb.Fatalf("temp dir: %v", err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
