package overlay

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/fstest"

	"github.com/spf13/afero"
)

// ltTarFs returns a TarFs over the archive of ents.
func ltTarFs(t testing.TB, ents ...ltEnt) *TarFs {
	t.Helper()
	b := ltTar(t, ents...)
	tfs, err := NewTarFs(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("NewTarFs: %v", err)
	}
	return tfs
}

// ltBase and ltApp are a two-layer image: ltApp edits ltBase.
var (
	ltBase = []ltEnt{
		{name: "bin/"}, {name: "bin/sh", body: "#!sh", mode: 0o755},
		{name: "etc/"}, {name: "etc/hosts", body: "127.0.0.1"}, {name: "etc/motd", body: "hi"},
		{name: "var/"}, {name: "var/cache/"}, {name: "var/cache/a", body: "a"}, {name: "var/cache/b", body: "b"},
		{name: "usr/"}, {name: "usr/doc/"}, {name: "usr/doc/FAQ", body: "faq"},
	}
	ltApp = []ltEnt{
		{name: "app/"}, {name: "app/conf", body: "port=80"}, {name: "app/conf.bak", typ: tar.TypeLink, link: "app/conf"},
		{name: "etc/"}, {name: "etc/.wh.motd"}, {name: "etc/hosts", body: "::1"},
		{name: "var/"}, {name: "var/cache/"}, {name: "var/cache/.wh..wh..opq"}, {name: "var/cache/c", body: "c"},
		{name: ".wh.usr"},
	}
)

func TestTarFsConformance(t *testing.T) {
	tfs := ltTarFs(t, ltApp...)
	err := fstest.TestFS(afero.NewIOFS(tfs), "app/conf", "app/conf.bak", "etc/hosts", "etc/.wh.motd", "var/cache/c", ".wh.usr")
	if err != nil {
		t.Fatal(err)
	}
}

func TestTarFsStacksAsLower(t *testing.T) {
	base, app := ltTarFs(t, ltBase...), ltTarFs(t, ltApp...)
	o, err := New(afero.NewMemMapFs(), []afero.Fs{app, base})
	if err != nil {
		t.Fatal(err)
	}
	flat := afero.NewMemMapFs()
	ltMust(t, Flatten(flat, o))
	want := []string{"app/", "app/conf.bak=port=80", "app/conf=port=80", "bin/", "bin/sh=#!sh",
		"etc/", "etc/hosts=::1", "var/", "var/cache/", "var/cache/c=c"}
	if got := ltNames(t, flat); !slices.Equal(got, want) {
		t.Errorf("merged view = %q, want %q", got, want)
	}

	applied := afero.NewMemMapFs()
	ltMust(t, ApplyLayer(applied, bytes.NewReader(ltTar(t, ltBase...))))
	ltMust(t, ApplyLayer(applied, bytes.NewReader(ltTar(t, ltApp...))))
	if err := ltDiff(applied, flat, true); err != nil {
		t.Errorf("ApplyLayer of both layers differs from the stacked TarFs view:\n%v", err)
	}
}

func TestTarFsLookup(t *testing.T) {
	tfs := ltTarFs(t,
		ltEnt{name: "usr/lib/libc", body: "c"},
		ltEnt{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
		ltEnt{name: "abs", typ: tar.TypeSymlink, link: "/usr/lib/libc"},
		ltEnt{name: "usr/up", typ: tar.TypeSymlink, link: "../usr"},
		ltEnt{name: "loop", typ: tar.TypeSymlink, link: "loop"},
		ltEnt{name: "file", body: "f"},
	)
	reads := []struct {
		name string
		want string
		err  error
	}{
		{"usr/lib/libc", "c", nil},
		{"/usr/lib/libc", "c", nil},
		{"lib/libc", "c", nil},
		{"abs", "c", nil},
		{"usr/up/lib/libc", "c", nil},
		{"/../usr/lib/libc", "c", nil},
		{"loop", "", syscall.ELOOP},
		{"file/x", "", syscall.ENOTDIR},
		{"lib/none", "", syscall.ENOENT},
		{"none", "", syscall.ENOENT},
	}
	for _, r := range reads {
		b, err := afero.ReadFile(tfs, r.name)
		if string(b) != r.want || !errors.Is(err, r.err) && (r.err != nil || err != nil) {
			t.Errorf("ReadFile(%q) = %q, %v; want %q, %v", r.name, b, err, r.want, r.err)
		}
	}
	fi, ok, err := tfs.LstatIfPossible("lib")
	if err != nil || !ok || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("LstatIfPossible(lib) = %v, %v, %v; want a symlink", fi, ok, err)
	}
	if target, err := tfs.ReadlinkIfPossible("lib"); target != "usr/lib" || err != nil {
		t.Errorf("ReadlinkIfPossible(lib) = %q, %v; want %q", target, err, "usr/lib")
	}
	if _, err := tfs.ReadlinkIfPossible("file"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("ReadlinkIfPossible(file) = %v, want EINVAL", err)
	}
	if fi, err := tfs.Stat("lib"); err != nil || !fi.IsDir() {
		t.Errorf("Stat(lib) = %v, %v; want a directory", fi, err)
	}
	if _, err := tfs.OpenFile("lib", os.O_RDONLY|syscall.O_NOFOLLOW, 0); !errors.Is(err, syscall.ELOOP) {
		t.Errorf("OpenFile(lib, O_NOFOLLOW) = %v, want ELOOP", err)
	}
}

func TestTarFsReadOnly(t *testing.T) {
	tfs := ltTarFs(t, ltEnt{name: "a", body: "a"})
	errs := map[string]error{
		"Create":    func() error { _, err := tfs.Create("b"); return err }(),
		"OpenFile":  func() error { _, err := tfs.OpenFile("a", os.O_RDWR, 0); return err }(),
		"Mkdir":     tfs.Mkdir("d", 0o755),
		"MkdirAll":  tfs.MkdirAll("d/e", 0o755),
		"Remove":    tfs.Remove("a"),
		"RemoveAll": tfs.RemoveAll("a"),
		"Rename":    tfs.Rename("a", "b"),
		"Chmod":     tfs.Chmod("a", 0o600),
		"Chown":     tfs.Chown("a", 1, 1),
		"Chtimes":   tfs.Chtimes("a", ltTime, ltTime),
	}
	for op, err := range errs {
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s = %v, want EROFS", op, err)
		}
	}
	f, err := tfs.Open("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("x")); !errors.Is(err, syscall.EBADF) {
		t.Errorf("Write = %v, want EBADF", err)
	}
	ltMust(t, f.Close())
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close = %v, want os.ErrClosed", err)
	}
}

func TestTarFsAttributes(t *testing.T) {
	tfs := ltTarFs(t, ltEnt{name: "d/f", body: "f", mode: 0o4711}, ltEnt{name: "o/", mode: 0o1777})
	want := map[string]fs.FileMode{"d": fs.ModeDir | 0o755, "d/f": fs.ModeSetuid | 0o711, "o": fs.ModeDir | fs.ModeSticky | 0o777}
	for name, mode := range want {
		fi, err := tfs.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != mode {
			t.Errorf("Stat(%q).Mode() = %v, want %v", name, fi.Mode(), mode)
		}
	}
	fi, _ := tfs.Stat("d/f")
	if h, ok := fi.Sys().(*tar.Header); !ok || h.Typeflag != tar.TypeReg || h.Size != 1 {
		t.Errorf("Stat(d/f).Sys() = %#v, want a *tar.Header of a regular file", fi.Sys())
	}
	if fi, _ := tfs.Stat("d"); !fi.ModTime().Equal(epoch) {
		t.Errorf("Stat(d).ModTime() = %v, want the epoch for an implied directory", fi.ModTime())
	}
}

func TestTarFsHostile(t *testing.T) {
	tests := []struct {
		name string
		data func(t *testing.T) []byte
		want error
	}{
		{"dot-dot", ltData(ltEnt{name: "../evil", body: "x"}), ErrInvalidLayer},
		{"absolute", ltData(ltEnt{name: "/etc/passwd", body: "x"}), ErrInvalidLayer},
		{"hard link outside", ltData(ltEnt{name: "l", typ: tar.TypeLink, link: "../etc/passwd"}), ErrInvalidLayer},
		{"hard link to nothing", ltData(ltEnt{name: "l", typ: tar.TypeLink, link: "x"}), ErrInvalidLayer},
		{"hard link to a whiteout", ltData(ltEnt{name: ".wh.x"}, ltEnt{name: "l", typ: tar.TypeLink, link: ".wh.x"}), ErrInvalidLayer},
		{"symlink climbing out", ltData(ltEnt{name: "a/l", typ: tar.TypeSymlink, link: "../../etc"}), ErrInvalidLayer},
		{"through own symlink", ltData(ltEnt{name: "l", typ: tar.TypeSymlink, link: "/"}, ltEnt{name: "l/etc/passwd", body: "x"}), ErrInvalidLayer},
		{"through own file", ltData(ltEnt{name: "f", body: "x"}, ltEnt{name: "f/x", body: "x"}), ErrInvalidLayer},
		{"duplicate", ltData(ltEnt{name: "a", body: "1"}, ltEnt{name: "./a", body: "2"}), ErrInvalidLayer},
		{"file over implied dir", ltData(ltEnt{name: "d/x", body: "x"}, ltEnt{name: "d", body: "d"}), ErrInvalidLayer},
		{"whiteout of own entry", ltData(ltEnt{name: "a", body: "a"}, ltEnt{name: ".wh.a"}), ErrInvalidLayer},
		{"whiteout of own implied dir", ltData(ltEnt{name: ".wh.d"}, ltEnt{name: "d/x", body: "x"}), ErrInvalidLayer},
		{"beneath a whiteout", ltData(ltEnt{name: ".wh.x/y", body: "y"}), ErrInvalidLayer},
		{"unknown type", ltData(ltEnt{name: "x", typ: 'Z'}), ErrInvalidLayer},
		{"empty input", func(*testing.T) []byte { return nil }, io.ErrUnexpectedEOF},
		{"no trailer", ltCut(ltEnt{name: "a", body: "a"}, 1024), io.ErrUnexpectedEOF},
		{"one zero block", ltCut(ltEnt{name: "a", body: "a"}, 512), io.ErrUnexpectedEOF},
		{"cut in data", ltCut(ltEnt{name: "a", body: strings.Repeat("a", 2000)}, 1024+512), io.ErrUnexpectedEOF},
		{"absurd size", ltHeaderOnly(tar.Header{Name: "big", Typeflag: tar.TypeReg, Size: 1 << 40, Mode: 0o644}), io.ErrUnexpectedEOF},
		{"gzip", func(t *testing.T) []byte { return ltGzip(t, ltTar(t, ltEnt{name: "a"})) }, ErrInvalidLayer},
		{"garbage", func(*testing.T) []byte { return bytes.Repeat([]byte("garbage!"), 200) }, ErrInvalidLayer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.data(t)
			_, err := NewTarFs(bytes.NewReader(b), int64(len(b)))
			if !errors.Is(err, tt.want) {
				t.Fatalf("NewTarFs = %v, want an error matching %v", err, tt.want)
			}
			var le *LayerError
			if !errors.As(err, &le) {
				t.Errorf("NewTarFs = %#v, want a *LayerError", err)
			}
		})
	}
}

func TestTarFsGzipMessage(t *testing.T) {
	b := ltGzip(t, ltTar(t, ltEnt{name: "a"}))
	_, err := NewTarFs(bytes.NewReader(b), int64(len(b)))
	if want := "layer: gzip-compressed layer: decompress it first"; err == nil || err.Error() != want {
		t.Errorf("NewTarFs(gzip) = %v, want %q", err, want)
	}
}

// ltCountingReaderAt counts the bytes read through it.
type ltCountingReaderAt struct {
	r io.ReaderAt
	n atomic.Int64
}

func (c *ltCountingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// TestTarFsReadsInPlace checks that indexing reads headers only and that
// files are read through the io.ReaderAt, concurrently.
func TestTarFsReadsInPlace(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	b := ltTar(t, ltEnt{name: "big1", body: big}, ltEnt{name: "big2", body: big}, ltEnt{name: "small", body: "s"})
	r := &ltCountingReaderAt{r: bytes.NewReader(b)}
	tfs, err := NewTarFs(r, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if n := r.n.Load(); n > 16<<10 {
		t.Errorf("NewTarFs read %d bytes, want only the headers", n)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if got, err := afero.ReadFile(tfs, "big2"); err != nil || string(got) != big {
				t.Errorf("ReadFile(big2) = %d bytes, %v", len(got), err)
			}
		})
	}
	wg.Wait()
}

// FuzzTarFs opens arbitrary bytes as a TarFs. It must never panic, must
// fail only with a *LayerError, and what it opens must pass fstest.TestFS
// and stack under an overlay.
func FuzzTarFs(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		tfs, err := NewTarFs(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			var le *LayerError
			if !errors.As(err, &le) {
				t.Fatalf("NewTarFs = %#v, want a *LayerError", err)
			}
			return
		}
		names := make([]string, 0, len(tfs.nodes))
		for name := range tfs.nodes {
			if name != "." {
				names = append(names, name)
			}
		}
		if err := fstest.TestFS(afero.NewIOFS(tfs), names...); err != nil {
			t.Fatalf("fstest.TestFS: %v", err)
		}
		o, err := New(afero.NewMemMapFs(), []afero.Fs{tfs})
		if err != nil {
			t.Fatal(err)
		}
		err = Flatten(afero.NewMemMapFs(), o)
		if err != nil && !errors.Is(err, afero.ErrNoSymlink) && !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("Flatten(overlay over the TarFs) = %v", err)
		}
	})
}
