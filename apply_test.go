package overlay

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/afero"
)

// ltEnt is one entry of a test archive. A name ending in "/" is a
// directory; typ overrides the type, mode the default mode (0644 or 0755).
type ltEnt struct {
	name string
	body string
	typ  byte
	link string
	mode int64
}

// ltTime is the mtime of every test entry.
var ltTime = time.Date(2023, 11, 14, 22, 13, 20, 0, time.UTC)

// ltTar returns an archive of the entries, with its end-of-archive marker.
func ltTar(t testing.TB, ents ...ltEnt) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		ltWrite(t, tw, e)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ltHeader returns the header of the test entry e.
func ltHeader(e ltEnt) *tar.Header {
	if e.typ == tar.TypeXGlobalHeader {
		return &tar.Header{Name: e.name, Typeflag: e.typ, PAXRecords: map[string]string{"comment": "x"}}
	}
	hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, ModTime: ltTime, Linkname: e.link, Size: int64(len(e.body))}
	if hdr.Typeflag == 0 {
		hdr.Typeflag = tar.TypeReg
		if strings.HasSuffix(e.name, "/") {
			hdr.Typeflag = tar.TypeDir
		}
	}
	if hdr.Typeflag != tar.TypeReg {
		hdr.Size = 0
	}
	if hdr.Mode == 0 {
		hdr.Mode = 0o644
		if hdr.Typeflag == tar.TypeDir {
			hdr.Mode = 0o755
		}
	}
	return hdr
}

// ltWrite writes the entry e to tw.
func ltWrite(t testing.TB, tw *tar.Writer, e ltEnt) {
	t.Helper()
	hdr := ltHeader(e)
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatalf("header %q: %v", e.name, err)
	}
	if _, err := io.WriteString(tw, e.body); err != nil {
		t.Fatal(err)
	}
}

// ltGzip compresses b.
func ltGzip(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestApplyLayer(t *testing.T) {
	base := map[string]string{"etc/hosts": "h", "etc/motd": "m", "d/a": "a", "d/sub/old": "o", "f": "f", "e/": ""}
	tests := []struct {
		name string
		ents []ltEnt
		want []string
	}{
		{"add", []ltEnt{{name: "new", body: "n"}},
			[]string{"d/", "d/a=a", "d/sub/", "d/sub/old=o", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f=f", "new=n"}},
		{"whiteout file", []ltEnt{{name: "etc/"}, {name: "etc/.wh.motd"}},
			[]string{"d/", "d/a=a", "d/sub/", "d/sub/old=o", "e/", "etc/", "etc/hosts=h", "f=f"}},
		{"whiteout dir", []ltEnt{{name: ".wh.d"}, {name: ".wh.e"}},
			[]string{"etc/", "etc/hosts=h", "etc/motd=m", "f=f"}},
		{"whiteout of a missing name", []ltEnt{{name: ".wh.nothing"}, {name: "etc/.wh.nothing"}},
			[]string{"d/", "d/a=a", "d/sub/", "d/sub/old=o", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f=f"}},
		{"opaque first", []ltEnt{{name: "d/"}, {name: "d/.wh..wh..opq"}, {name: "d/c", body: "c"}},
			[]string{"d/", "d/c=c", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f=f"}},
		{"opaque last", []ltEnt{{name: "d/"}, {name: "d/c", body: "c"}, {name: "d/.wh..wh..opq"}},
			[]string{"d/", "d/c=c", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f=f"}},
		{"opaque clears beneath kept dirs", []ltEnt{{name: "d/sub/new", body: "n"}, {name: "d/.wh..wh..opq"}},
			[]string{"d/", "d/sub/", "d/sub/new=n", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f=f"}},
		{"opaque root", []ltEnt{{name: ".wh..wh..opq"}, {name: "etc/hosts", body: "H"}},
			[]string{"etc/", "etc/hosts=H"}},
		{"file replaces dir", []ltEnt{{name: "d", body: "D"}},
			[]string{"d=D", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f=f"}},
		{"dir replaces file", []ltEnt{{name: "f/"}, {name: "f/x", body: "x"}},
			[]string{"d/", "d/a=a", "d/sub/", "d/sub/old=o", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f/", "f/x=x"}},
		{"implied parent replaces file", []ltEnt{{name: "f/.wh.x"}},
			[]string{"d/", "d/a=a", "d/sub/", "d/sub/old=o", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f/"}},
		{"dir merges", []ltEnt{{name: "d/"}, {name: "d/b", body: "b"}},
			[]string{"d/", "d/a=a", "d/b=b", "d/sub/", "d/sub/old=o", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f=f"}},
		{"file replaced", []ltEnt{{name: "etc/hosts", body: "H"}},
			[]string{"d/", "d/a=a", "d/sub/", "d/sub/old=o", "e/", "etc/", "etc/hosts=H", "etc/motd=m", "f=f"}},
		{"implied parents", []ltEnt{{name: "p/q/r", body: "r"}},
			[]string{"d/", "d/a=a", "d/sub/", "d/sub/old=o", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f=f", "p/", "p/q/", "p/q/r=r"}},
		{"hard link copies", []ltEnt{{name: "x", body: "xx"}, {name: "y", typ: tar.TypeLink, link: "./x"}},
			[]string{"d/", "d/a=a", "d/sub/", "d/sub/old=o", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f=f", "x=xx", "y=xx"}},
		{"root entry and global header", []ltEnt{{name: "./"}, {name: "pax_global_header", typ: tar.TypeXGlobalHeader}},
			[]string{"d/", "d/a=a", "d/sub/", "d/sub/old=o", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f=f"}},
		{"aufs metadata skipped", []ltEnt{{name: ".wh..wh.plnk/"}, {name: ".wh..wh.plnk/1.2", body: "z"}, {name: ".wh..wh.aufs"}},
			[]string{"d/", "d/a=a", "d/sub/", "d/sub/old=o", "e/", "etc/", "etc/hosts=h", "etc/motd=m", "f=f"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, gz := range []bool{false, true} {
				dst := ltMem(t, base)
				data := ltTar(t, tt.ents...)
				if gz {
					data = ltGzip(t, data)
				}
				if err := ApplyLayer(dst, bytes.NewReader(data)); err != nil {
					t.Fatalf("ApplyLayer(gzip=%v) = %v", gz, err)
				}
				if got := ltNames(t, dst); !slices.Equal(got, tt.want) {
					t.Errorf("ApplyLayer(gzip=%v) tree = %q, want %q", gz, got, tt.want)
				}
			}
		})
	}
}

func TestApplyLayerAttributes(t *testing.T) {
	dst := ltMem(t, map[string]string{"old/": ""})
	data := ltTar(t,
		ltEnt{name: "ro/", mode: 0o555},
		ltEnt{name: "ro/f", body: "f", mode: 0o4711},
		ltEnt{name: "old/", mode: 0o1777},
	)
	ltMust(t, ApplyLayer(dst, bytes.NewReader(data)))
	for name, want := range map[string]fs.FileMode{
		"/ro":   fs.ModeDir | 0o555,
		"/ro/f": fs.ModeSetuid | 0o711,
		"/old":  fs.ModeDir | fs.ModeSticky | 0o777,
	} {
		fi, err := dst.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("Stat(%q).Mode() = %v, want %v", name, fi.Mode(), want)
		}
		if !fi.ModTime().Equal(ltTime) {
			t.Errorf("Stat(%q).ModTime() = %v, want %v", name, fi.ModTime(), ltTime)
		}
	}
}

func TestApplyLayerOnDisk(t *testing.T) {
	root := t.TempDir()
	dst := afero.NewBasePathFs(afero.NewOsFs(), root)
	data := ltTar(t,
		ltEnt{name: "usr/lib/libc", body: "c"},
		ltEnt{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
		ltEnt{name: "abs", typ: tar.TypeSymlink, link: "/etc/passwd"},
		ltEnt{name: "usr/", mode: 0o750},
	)
	ltMust(t, ApplyLayer(dst, bytes.NewReader(data)))
	want := []string{"abs->/etc/passwd", "lib->usr/lib", "usr/", "usr/lib/", "usr/lib/libc=c"}
	if got := ltNames(t, dst); !slices.Equal(got, want) {
		t.Errorf("tree = %q, want %q", got, want)
	}
	for _, name := range []string{"lib", "usr"} {
		fi, err := os.Lstat(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(ltTime) {
			t.Errorf("Lstat(%q).ModTime() = %v, want %v", name, fi.ModTime(), ltTime)
		}
	}
}

// TestApplyLayerNeverFollowsSymlinks checks that a symlink a lower layer
// left in dst is replaced, never followed, whether an entry has its name or
// lies beneath it.
func TestApplyLayerNeverFollowsSymlinks(t *testing.T) {
	top := t.TempDir()
	outside := filepath.Join(top, "outside")
	root := filepath.Join(top, "root")
	for _, d := range []string{outside, root} {
		ltMust(t, os.Mkdir(d, 0o755))
	}
	ltMust(t, os.WriteFile(filepath.Join(outside, "victim"), []byte("safe"), 0o644))
	ltMust(t, os.Symlink(outside, filepath.Join(root, "dirlink")))
	ltMust(t, os.Symlink(filepath.Join(outside, "victim"), filepath.Join(root, "filelink")))
	ltMust(t, os.Symlink("../outside", filepath.Join(root, "rel")))

	dst := afero.NewBasePathFs(afero.NewOsFs(), root)
	data := ltTar(t,
		ltEnt{name: "dirlink/victim", body: "pwned"},
		ltEnt{name: "filelink", body: "pwned"},
		ltEnt{name: "rel/", mode: 0o755},
		ltEnt{name: "rel/victim", body: "pwned"},
	)
	ltMust(t, ApplyLayer(dst, bytes.NewReader(data)))
	if b, err := os.ReadFile(filepath.Join(outside, "victim")); err != nil || string(b) != "safe" {
		t.Errorf("outside/victim = %q, %v; want %q", b, err, "safe")
	}
	want := []string{"dirlink/", "dirlink/victim=pwned", "filelink=pwned", "rel/", "rel/victim=pwned"}
	if got := ltNames(t, dst); !slices.Equal(got, want) {
		t.Errorf("tree = %q, want %q", got, want)
	}
}

func TestApplyLayerHostile(t *testing.T) {
	big := tar.Header{Name: "big", Typeflag: tar.TypeReg, Size: 1 << 40, Mode: 0o644}
	tests := []struct {
		name string
		data func(t *testing.T) []byte
		opts []ApplyOption
		want error
	}{
		{"dot-dot", ltData(ltEnt{name: "../evil", body: "x"}), nil, ErrInvalidLayer},
		{"dot-dot inside", ltData(ltEnt{name: "a/../../evil", body: "x"}), nil, ErrInvalidLayer},
		{"dot-dot dir", ltData(ltEnt{name: "../"}), nil, ErrInvalidLayer},
		{"absolute", ltData(ltEnt{name: "/etc/passwd", body: "x"}), nil, ErrInvalidLayer},
		{"empty name", ltData(ltEnt{name: "", body: "x"}), nil, ErrInvalidLayer},
		{"long component", ltData(ltEnt{name: strings.Repeat("n", 256), body: "x"}), nil, ErrInvalidLayer},
		{"hard link outside", ltData(ltEnt{name: "l", typ: tar.TypeLink, link: "../etc/passwd"}), nil, ErrInvalidLayer},
		{"hard link absolute", ltData(ltEnt{name: "l", typ: tar.TypeLink, link: "/etc/passwd"}), nil, ErrInvalidLayer},
		{"hard link to a lower file", ltData(ltEnt{name: "l", typ: tar.TypeLink, link: "lowerfile"}), nil, ErrInvalidLayer},
		{"hard link to a dir", ltData(ltEnt{name: "d/"}, ltEnt{name: "l", typ: tar.TypeLink, link: "d"}), nil, ErrInvalidLayer},
		{"hard link to a later file", ltData(ltEnt{name: "l", typ: tar.TypeLink, link: "x"}, ltEnt{name: "x", body: "x"}), nil, ErrInvalidLayer},
		{"hard link to a symlink", ltData(ltEnt{name: "s", typ: tar.TypeSymlink, link: "x"}, ltEnt{name: "l", typ: tar.TypeLink, link: "s"}), nil, ErrInvalidLayer},
		{"symlink climbing out", ltData(ltEnt{name: "a/l", typ: tar.TypeSymlink, link: "../../etc"}), nil, ErrInvalidLayer},
		{"empty symlink", ltData(ltEnt{name: "l", typ: tar.TypeSymlink}), nil, ErrInvalidLayer},
		{"through own symlink", ltData(ltEnt{name: "l", typ: tar.TypeSymlink, link: "/"}, ltEnt{name: "l/etc/passwd", body: "x"}), nil, ErrInvalidLayer},
		{"through own relative symlink", ltData(ltEnt{name: "l", typ: tar.TypeSymlink, link: "sub"}, ltEnt{name: "l/x", body: "x"}), nil, ErrInvalidLayer},
		{"through own file", ltData(ltEnt{name: "f", body: "x"}, ltEnt{name: "f/x", body: "x"}), nil, ErrInvalidLayer},
		{"duplicate", ltData(ltEnt{name: "a", body: "1"}, ltEnt{name: "a", body: "2"}), nil, ErrInvalidLayer},
		{"duplicate spelled differently", ltData(ltEnt{name: "a/b", body: "1"}, ltEnt{name: "./a//b", body: "2"}), nil, ErrInvalidLayer},
		{"duplicate dir", ltData(ltEnt{name: "d/"}, ltEnt{name: "d"}), nil, ErrInvalidLayer},
		{"duplicate whiteout", ltData(ltEnt{name: ".wh.a"}, ltEnt{name: ".wh.a"}), nil, ErrInvalidLayer},
		{"file over own dir", ltData(ltEnt{name: "d/x", body: "x"}, ltEnt{name: "d", body: "d"}), nil, ErrInvalidLayer},
		{"whiteout then entry", ltData(ltEnt{name: ".wh.a"}, ltEnt{name: "a", body: "a"}), nil, ErrInvalidLayer},
		{"entry then whiteout", ltData(ltEnt{name: "a", body: "a"}, ltEnt{name: ".wh.a"}), nil, ErrInvalidLayer},
		{"whiteout of a parent", ltData(ltEnt{name: ".wh.d"}, ltEnt{name: "d/x", body: "x"}), nil, ErrInvalidLayer},
		{"whiteout of dot-dot", ltData(ltEnt{name: "a/.wh..."}), nil, ErrInvalidLayer},
		{"beneath a whiteout", ltData(ltEnt{name: ".wh.x/y", body: "y"}), nil, ErrInvalidLayer},
		{"root is a file", ltData(ltEnt{name: ".", typ: tar.TypeReg}), nil, ErrInvalidLayer},
		{"unknown type", ltData(ltEnt{name: "x", typ: 'Z'}), nil, ErrInvalidLayer},
		{"device", ltData(ltEnt{name: "null", typ: tar.TypeChar}), nil, errors.ErrUnsupported},
		{"fifo", ltData(ltEnt{name: "p", typ: tar.TypeFifo}), nil, errors.ErrUnsupported},
		{"empty input", func(*testing.T) []byte { return nil }, nil, io.ErrUnexpectedEOF},
		{"no trailer", ltCut(ltEnt{name: "a", body: "a"}, 1024), nil, io.ErrUnexpectedEOF},
		{"one zero block", ltCut(ltEnt{name: "a", body: "a"}, 512), nil, io.ErrUnexpectedEOF},
		{"cut in data", ltCut(ltEnt{name: "a", body: strings.Repeat("a", 2000)}, 1024+512), nil, io.ErrUnexpectedEOF},
		{"cut in header", ltCut(ltEnt{name: "a", body: "a"}, 1024+1024+100), nil, io.ErrUnexpectedEOF},
		{"gzip cut", ltGzipCut(ltEnt{name: "a", body: strings.Repeat("a", 20000)}), nil, io.ErrUnexpectedEOF},
		{"garbage", func(*testing.T) []byte { return bytes.Repeat([]byte("garbage!"), 200) }, nil, ErrInvalidLayer},
		{"zstd", func(*testing.T) []byte { return []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0} }, nil, ErrInvalidLayer},
		{"absurd size", ltHeaderOnly(big), nil, ErrInvalidLayer},
		{"over the size limit", ltData(ltEnt{name: "a", body: "0123456789x"}), []ApplyOption{MaxLayerSize(10)}, ErrInvalidLayer},
		{"hard links over the size limit", ltData(ltEnt{name: "a", body: "012345"}, ltEnt{name: "b", typ: tar.TypeLink, link: "a"}, ltEnt{name: "c", typ: tar.TypeLink, link: "a"}), []ApplyOption{MaxLayerSize(15)}, ErrInvalidLayer},
		{"too many entries", ltData(ltEnt{name: "a"}, ltEnt{name: "b"}, ltEnt{name: "c"}), []ApplyOption{MaxLayerEntries(2)}, ErrInvalidLayer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := ltDisk(t)
			ltFill(t, dst, map[string]string{"lowerfile": "lower"})
			err := ApplyLayer(dst, bytes.NewReader(tt.data(t)), tt.opts...)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ApplyLayer = %v, want an error matching %v", err, tt.want)
			}
			var le *LayerError
			if !errors.As(err, &le) {
				t.Errorf("ApplyLayer = %#v, want a *LayerError", err)
			}
		})
	}
}

// ltData returns a function giving the archive of ents.
func ltData(ents ...ltEnt) func(t *testing.T) []byte {
	return func(t *testing.T) []byte { return ltTar(t, ents...) }
}

// ltCut returns a function giving the archive of e, cut n bytes before
// its end.
func ltCut(e ltEnt, n int) func(t *testing.T) []byte {
	return func(t *testing.T) []byte {
		b := ltTar(t, e, ltEnt{name: "z", body: "z"})
		return b[:len(b)-n]
	}
}

// ltGzipCut returns a function giving the gzipped archive of e, cut short.
func ltGzipCut(e ltEnt) func(t *testing.T) []byte {
	return func(t *testing.T) []byte {
		b := ltGzip(t, ltTar(t, e))
		return b[:len(b)-8]
	}
}

// ltHeaderOnly returns a function giving an archive that holds hdr and a
// few bytes of its content.
func ltHeaderOnly(hdr tar.Header) func(t *testing.T) []byte {
	return func(t *testing.T) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatal(err)
		}
		buf.WriteString("only a few bytes")
		return buf.Bytes()
	}
}

// TestApplyLayerNothingOutside checks that hostile archives applied to a
// directory on disk write nothing beside it.
func TestApplyLayerNothingOutside(t *testing.T) {
	archives := [][]ltEnt{
		{{name: "../evil", body: "x"}},
		{{name: "l", typ: tar.TypeSymlink, link: "/"}, {name: "l/evil", body: "x"}},
		{{name: "l", typ: tar.TypeSymlink, link: "../.."}, {name: "l/evil", body: "x"}},
		{{name: "h", typ: tar.TypeLink, link: "../evil"}},
		{{name: "a/", mode: 0o755}, {name: "a/l", typ: tar.TypeSymlink, link: "../../evil"}},
	}
	for i, ents := range archives {
		top := t.TempDir()
		root := filepath.Join(top, "root")
		ltMust(t, os.Mkdir(root, 0o755))
		err := ApplyLayer(afero.NewBasePathFs(afero.NewOsFs(), root), bytes.NewReader(ltTar(t, ents...)))
		if !errors.Is(err, ErrInvalidLayer) {
			t.Errorf("archive %d: ApplyLayer = %v, want ErrInvalidLayer", i, err)
		}
		list, _ := os.ReadDir(top)
		if len(list) != 1 {
			t.Errorf("archive %d: %d names beside the root, want none", i, len(list)-1)
		}
	}
}

func TestLayerName(t *testing.T) {
	tests := []struct {
		raw, want string
		ok        bool
	}{
		{"a/b", "a/b", true},
		{"./a/b/", "a/b", true},
		{"./", ".", true},
		{"a//b/./c", "a/b/c", true},
		{"a\x00b", "", false},
		{"/a", "", false},
		{"..", "", false},
		{"a/../b", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, err := layerName(tt.raw)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("layerName(%q) = %q, %v; want %q, ok=%v", tt.raw, got, err, tt.want, tt.ok)
		}
	}
}

func TestLayerErrorText(t *testing.T) {
	err := ApplyLayer(afero.NewMemMapFs(), bytes.NewReader(ltTar(t, ltEnt{name: "../x", body: "x"})))
	want := `layer entry "../x": name climbs out of the root with ".."`
	if err == nil || err.Error() != want {
		t.Errorf("ApplyLayer = %v, want %q", err, want)
	}
}

// FuzzApplyLayer applies arbitrary bytes as a layer. It must never panic,
// must fail only with a *LayerError, must leave no marker in the tree, and
// must agree with the overlay: when the same bytes also open as a TarFs,
// the layer stacked over the same base shows the tree ApplyLayer made.
func FuzzApplyLayer(f *testing.F) {
	base := map[string]string{"etc/hosts": "h", "d/a": "a", "d/sub/old": "o", "f": "f"}
	f.Fuzz(func(t *testing.T, data []byte) {
		dst := ltMem(t, base)
		err := ApplyLayer(dst, bytes.NewReader(data), MaxLayerSize(1<<20), MaxLayerEntries(1000))
		var le *LayerError
		if err != nil {
			if !errors.As(err, &le) {
				t.Fatalf("ApplyLayer = %#v, want a *LayerError", err)
			}
			return
		}
		for _, name := range ltNames(t, dst) {
			for c := range strings.SplitSeq(strings.TrimSuffix(name, "/"), "/") {
				if isReserved(c) {
					t.Fatalf("ApplyLayer left the marker %q", name)
				}
			}
		}
		ltCompareStacked(t, data, ltMem(t, base), dst)
	})
}

// ltCompareStacked checks that the layer data, opened as a TarFs and
// stacked over base, shows the tree applied.
func ltCompareStacked(t *testing.T, data []byte, base, applied afero.Fs) {
	tfs, err := NewTarFs(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return // gzip, or a fault only random access sees
	}
	o, err := New(nil, []afero.Fs{tfs, base})
	if err != nil {
		t.Fatal(err)
	}
	flat := afero.NewMemMapFs()
	if err := Flatten(flat, o); err != nil {
		t.Fatalf("Flatten(TarFs over base) = %v", err)
	}
	if err := ltDiff(flat, applied, false); err != nil {
		t.Fatalf("ApplyLayer differs from the layer stacked as a TarFs:\n%v", err)
	}
}

// ltSeeds are the committed seed corpus of FuzzApplyLayer and FuzzTarFs.
func ltSeeds(t *testing.T) map[string][]byte {
	pax := ltEnt{name: strings.Repeat("long/", 30) + "name", body: "pax"}
	return map[string][]byte{
		"base":             ltTar(t, ltBase...),
		"app":              ltTar(t, ltApp...),
		"app-gzip":         ltGzip(t, ltTar(t, ltApp...)),
		"empty":            ltTar(t),
		"dot-dot":          ltTar(t, ltEnt{name: "../evil", body: "x"}),
		"through-symlink":  ltTar(t, ltEnt{name: "l", typ: tar.TypeSymlink, link: "/"}, ltEnt{name: "l/etc/passwd", body: "x"}),
		"symlink-climbing": ltTar(t, ltEnt{name: "a/l", typ: tar.TypeSymlink, link: "../../etc"}),
		"duplicate":        ltTar(t, ltEnt{name: "a", body: "1"}, ltEnt{name: "./a", body: "2"}),
		"truncated":        ltCut(ltEnt{name: "a", body: strings.Repeat("a", 700)}, 1024+100)(t),
		"pax-and-root":     ltTar(t, ltEnt{name: "pax_global_header", typ: tar.TypeXGlobalHeader}, ltEnt{name: "./", mode: 0o700}, pax),
		"opaque-as-dir":    ltTar(t, ltEnt{name: "d/.wh..wh..opq/x", body: "x"}, ltEnt{name: "f/.wh.x"}),
		"aufs":             ltTar(t, ltEnt{name: ".wh..wh.plnk/"}, ltEnt{name: ".wh..wh.plnk/1.2", body: "z"}, ltEnt{name: ".wh..wh.aufs"}),
		"links":            ltTar(t, ltEnt{name: "x", body: "xx", mode: 0o4755}, ltEnt{name: "y", typ: tar.TypeLink, link: "x"}, ltEnt{name: "z", typ: tar.TypeLink, link: "y"}, ltEnt{name: "s", typ: tar.TypeSymlink, link: "x"}),
		"devices":          ltTar(t, ltEnt{name: "dev/null", typ: tar.TypeChar}, ltEnt{name: "p", typ: tar.TypeFifo}),
	}
}

// TestFuzzSeeds checks that the committed seed corpora are there; with
// OVERLAY_WRITE_SEEDS=1 it writes them first.
func TestFuzzSeeds(t *testing.T) {
	for _, target := range []string{"FuzzApplyLayer", "FuzzTarFs"} {
		dir := filepath.Join("testdata", "fuzz", target)
		if os.Getenv("OVERLAY_WRITE_SEEDS") == "1" {
			ltMust(t, os.MkdirAll(dir, 0o755))
			for name, data := range ltSeeds(t) {
				text := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
				ltMust(t, os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(text), 0o644))
			}
		}
		list, err := os.ReadDir(dir)
		if err != nil || len(list) < 10 {
			t.Errorf("%s: %d seeds, %v; want at least 10", dir, len(list), err)
		}
	}
}

// ltScriptNames are the names FuzzLayerScript builds layers from: clashing,
// nested, hostile and marker names.
var ltScriptNames = []string{
	"a", "a/b", "a/b/c", "./a", "b", "b/", ".wh.a", "a/.wh.b", "a/.wh..wh..opq", ".wh..wh..opq",
	"d/sub/x", "../x", "/abs", "l", "l/x", ".wh..wh.plnk/1", "a//b", "f/.wh.x", "d", "d/.wh.sub",
}

// ltScriptTypes are the entry types FuzzLayerScript uses.
var ltScriptTypes = []byte{tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeReg, tar.TypeDir}

// ltScriptLinks are the link targets FuzzLayerScript uses.
var ltScriptLinks = []string{"a", "a/b", "/a", "../..", "b/../a", "l", "d/sub", ""}

// FuzzLayerScript builds well-formed archives from a script, three bytes an
// entry (name, type, link target), so that the fuzzer explores how entries
// combine rather than the tar format, and checks ApplyLayer against the
// layer stacked as a TarFs, as FuzzApplyLayer does.
func FuzzLayerScript(f *testing.F) {
	f.Add([]byte{0, 1, 0, 1, 0, 0, 6, 0, 0})
	f.Add([]byte{8, 0, 0, 3, 0, 0, 2, 0, 0})
	f.Add([]byte{13, 2, 2, 14, 0, 0})
	base := map[string]string{"a/b": "b", "d/sub/old": "o", "f": "f", "l": "l"}
	f.Fuzz(func(t *testing.T, script []byte) {
		var ents []ltEnt
		for i := 0; i+2 < len(script) && len(ents) < 12; i += 3 {
			e := ltEnt{
				name: ltScriptNames[int(script[i])%len(ltScriptNames)],
				typ:  ltScriptTypes[int(script[i+1])%len(ltScriptTypes)],
				link: ltScriptLinks[int(script[i+2])%len(ltScriptLinks)],
			}
			switch {
			case e.typ == tar.TypeDir && !strings.HasSuffix(e.name, "/"):
				e.name += "/"
			case e.typ != tar.TypeDir:
				e.name = strings.TrimSuffix(e.name, "/")
			}
			if e.typ == tar.TypeReg {
				e.body = e.name
			}
			ents = append(ents, e)
		}
		data := ltTar(t, ents...)
		dst := ltDisk(t)
		ltFill(t, dst, base)
		if err := ApplyLayer(dst, bytes.NewReader(data)); err != nil {
			var le *LayerError
			if !errors.As(err, &le) {
				t.Fatalf("ApplyLayer = %#v, want a *LayerError", err)
			}
			return
		}
		baseFs := ltDisk(t)
		ltFill(t, baseFs, base)
		ltCompareStackedOnDisk(t, data, baseFs, dst)
	})
}

// ltCompareStackedOnDisk is ltCompareStacked with a disk destination, which
// holds symlinks.
func ltCompareStackedOnDisk(t *testing.T, data []byte, base, applied afero.Fs) {
	tfs, err := NewTarFs(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("ApplyLayer accepted a layer NewTarFs refuses: %v", err)
	}
	o, err := New(nil, []afero.Fs{tfs, base})
	if err != nil {
		t.Fatal(err)
	}
	flat := ltDisk(t)
	if err := Flatten(flat, o); err != nil {
		t.Fatalf("Flatten(TarFs over base) = %v", err)
	}
	if err := ltDiff(flat, applied, false); err != nil {
		t.Fatalf("ApplyLayer differs from the layer stacked as a TarFs:\n%v", err)
	}
}
