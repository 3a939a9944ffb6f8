package interop

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/afero"
	"golang.org/x/sys/unix"

	"github.com/stackfs/overlay"
)

// testStack is a stack of exported layers, bottom first, and the overlay
// whose commits made them.
type testStack struct {
	name   string
	layers [][]byte
}

// stacks returns the stacks the tests check: random ones, and one built on
// the example image of testdata/layers.
func stacks(t *testing.T) []testStack {
	t.Helper()
	n := 12
	if testing.Short() {
		n = 3
	}
	var out []testStack
	for seed := range n {
		out = append(out, testStack{name: fmt.Sprintf("random%d", seed), layers: randomStack(t, uint64(seed))})
	}
	return append(out, exampleStack(t))
}

// diskFs returns a new temporary directory as an afero.Fs.
func diskFs(t *testing.T) afero.Fs {
	t.Helper()
	return afero.NewBasePathFs(afero.NewOsFs(), t.TempDir())
}

// randomStack builds three layers by random operations on an overlay,
// exporting and committing its upper after each round.
func randomStack(t *testing.T, seed uint64) [][]byte {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 0x1a7e5))
	o, err := overlay.New(diskFs(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	var layers [][]byte
	for range 3 {
		randomOps(r, o, 30)
		layers = append(layers, exportLayer(t, o))
		if err := o.Commit(diskFs(t)); err != nil {
			t.Fatal(err)
		}
	}
	return layers
}

// exampleStack is the example image of testdata/layers with one more layer
// that edits it.
func exampleStack(t *testing.T) testStack {
	t.Helper()
	var layers [][]byte
	var lowers []afero.Fs
	for _, name := range []string{"base.tar", "app.tar"} {
		b, err := os.ReadFile(filepath.Join("..", "testdata", "layers", name))
		if err != nil {
			t.Fatal(err)
		}
		tfs, err := overlay.NewTarFs(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, b)
		lowers = append([]afero.Fs{tfs}, lowers...)
	}
	o, err := overlay.New(diskFs(t), lowers)
	if err != nil {
		t.Fatal(err)
	}
	must(t, afero.WriteFile(o, "etc/motd", []byte("back again\n"), 0o600))
	must(t, o.RemoveAll("usr"))
	must(t, o.Mkdir("usr", 0o755))
	must(t, o.Rename("app", "opt"))
	must(t, o.SymlinkIfPossible("/opt/server", "bin/server"))
	must(t, o.Chmod("etc/hosts", 0o600))
	return testStack{name: "example", layers: append(layers, exportLayer(t, o))}
}

// exportLayer returns the overlay's upper as a layer tar.
func exportLayer(t *testing.T, o *overlay.Overlay) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := overlay.ExportLayer(&buf, o); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pool is the names random operations use: few, so that they collide.
var pool = []string{"a", "b", "c"}

// randomPath returns a random name one to three components deep.
func randomPath(r *rand.Rand) string {
	parts := make([]string, 1+r.IntN(3))
	for i := range parts {
		parts[i] = pool[r.IntN(len(pool))]
	}
	return strings.Join(parts, "/")
}

// randomOps runs n random operations on o, ignoring their errors.
func randomOps(r *rand.Rand, o *overlay.Overlay, n int) {
	modes := []fs.FileMode{0o644, 0o600, 0o755, 0o750}
	for range n {
		p, q := randomPath(r), randomPath(r)
		switch r.IntN(10) {
		case 0, 1:
			_ = afero.WriteFile(o, p, []byte(q), modes[r.IntN(len(modes))])
		case 2:
			_ = o.Remove(p)
		case 3:
			_ = o.RemoveAll(p)
		case 4:
			_ = o.Mkdir(p, modes[r.IntN(len(modes))]|0o100)
		case 5:
			_ = o.MkdirAll(p, 0o755)
		case 6:
			_ = o.Rename(p, q)
		case 7:
			_ = o.Chmod(p, modes[r.IntN(len(modes))])
		case 8:
			mt := time.Date(2020, 1, 1, 0, 0, r.IntN(1e6), 0, time.UTC)
			_ = o.Chtimes(p, mt, mt)
		default:
			_ = o.SymlinkIfPossible("/"+q, p)
		}
	}
}

// node is what the comparisons check of one name.
type node struct {
	mode     fs.FileMode
	uid, gid uint32
	mtime    int64 // whole seconds: layer tars keep no more
	data     string
	link     string
}

// snapshot describes every name beneath dir, not dir itself.
func snapshot(t *testing.T, dir string) map[string]node {
	t.Helper()
	out := make(map[string]node)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n := node{mode: info.Mode(), uid: st.Uid, gid: st.Gid, mtime: st.Mtim.Sec}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			n.link, err = os.Readlink(p)
		case info.Mode().IsRegular():
			var b []byte
			b, err = os.ReadFile(p)
			n.data = string(b)
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = n
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// compareTrees returns every difference between the trees under want and
// got, joined.
func compareTrees(t *testing.T, want, got string) error {
	t.Helper()
	w, g := snapshot(t, want), snapshot(t, got)
	var names []string
	for name := range w {
		names = append(names, name)
	}
	for name := range g {
		if _, ok := w[name]; !ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var errs []error
	for _, name := range names {
		wn, wok := w[name]
		gn, gok := g[name]
		switch {
		case !gok:
			errs = append(errs, fmt.Errorf("%s: missing", name))
		case !wok:
			errs = append(errs, fmt.Errorf("%s: unexpected %v", name, gn.mode))
		case wn != gn:
			errs = append(errs, fmt.Errorf("%s: got %+v, want %+v", name, gn, wn))
		}
	}
	return errors.Join(errs...)
}

// applyLayers applies the layers, bottom first, onto a new directory with
// ApplyLayer and returns it.
func applyLayers(t *testing.T, layers [][]byte) string {
	t.Helper()
	dir := t.TempDir()
	dst := afero.NewBasePathFs(afero.NewOsFs(), dir)
	for i, l := range layers {
		if err := overlay.ApplyLayer(dst, bytes.NewReader(l)); err != nil {
			t.Fatalf("ApplyLayer(layer %d): %v", i, err)
		}
	}
	return dir
}

// flattenLayers stacks the layers, opened in place, and flattens the merged
// view into a new directory, which it returns.
func flattenLayers(t *testing.T, layers [][]byte) string {
	t.Helper()
	var lowers []afero.Fs
	for _, l := range layers {
		tfs, err := overlay.NewTarFs(bytes.NewReader(l), int64(len(l)))
		if err != nil {
			t.Fatal(err)
		}
		lowers = append([]afero.Fs{tfs}, lowers...)
	}
	o, err := overlay.New(nil, lowers)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := overlay.Flatten(afero.NewBasePathFs(afero.NewOsFs(), dir), o); err != nil {
		t.Fatal(err)
	}
	return dir
}

// kernelMarkers says how extractRaw writes the OCI markers.
type kernelMarkers bool

const (
	keepMarkers    kernelMarkers = false // as the files they are
	convertMarkers kernelMarkers = true  // as the kernel's: char 0:0 and the opaque xattr
)

// extractRaw writes the entries of a trusted layer into dir as they are,
// with modes, owners and times; markers are kept or converted to the
// kernel's overlayfs form.
func extractRaw(t *testing.T, layer []byte, dir string, markers kernelMarkers) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(layer))
	var dirs []*tar.Header
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, hdr.Name)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		if markers == convertMarkers && extractMarker(t, p) {
			continue
		}
		if hdr.Typeflag == tar.TypeDir {
			dirs = append(dirs, hdr)
		}
		must(t, extractEntry(p, dir, hdr, tr))
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		must(t, setAttrs(filepath.Join(dir, dirs[i].Name), dirs[i]))
	}
}

// extractMarker writes p in the kernel's form if it is a marker, and
// reports whether it was.
func extractMarker(t *testing.T, p string) bool {
	dir, base := filepath.Split(p)
	switch {
	case base == ".wh..wh..opq":
		must(t, unix.Setxattr(dir, "trusted.overlay.opaque", []byte("y"), 0))
	case strings.HasPrefix(base, ".wh."):
		must(t, unix.Mknod(filepath.Join(dir, base[len(".wh."):]), unix.S_IFCHR, 0))
	default:
		return false
	}
	return true
}

// extractEntry writes one entry at p.
func extractEntry(p, root string, hdr *tar.Header, data io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeDir:
		return os.MkdirAll(p, 0o755)
	case tar.TypeSymlink:
		if err := os.Symlink(hdr.Linkname, p); err != nil {
			return err
		}
	case tar.TypeLink:
		return os.Link(filepath.Join(root, hdr.Linkname), p)
	case tar.TypeReg:
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("%s: unexpected type %c", hdr.Name, hdr.Typeflag)
	}
	return setAttrs(p, hdr)
}

// setAttrs gives p the owner, mode and times of hdr, without following a
// symlink.
func setAttrs(p string, hdr *tar.Header) error {
	if err := os.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := os.Chmod(p, hdr.FileInfo().Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return err
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// must fails the test on an error.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// isRoot reports whether the tests run as root, which owners and the
// kernel mount need.
func isRoot() bool { return syscall.Geteuid() == 0 }
