package overlay

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/afero"
)

// ltExport returns the layer ExportLayer writes for o.
func ltExport(t harnessTB, o *Overlay, opts ...ExportOption) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := ExportLayer(&buf, o, opts...); err != nil {
		t.Fatalf("ExportLayer: %v", err)
	}
	return buf.Bytes()
}

// ltHeaders returns the headers of the archive b.
func ltHeaders(t harnessTB, b []byte) []*tar.Header {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var out []*tar.Header
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading the layer: %v", err)
		}
		out = append(out, hdr)
	}
}

// ltListing describes headers as "name type mode size".
func ltListing(hdrs []*tar.Header) []string {
	var out []string
	for _, h := range hdrs {
		out = append(out, fmt.Sprintf("%s %c %o %d", h.Name, h.Typeflag, h.Mode, h.Size))
	}
	return out
}

func TestExportLayerEntries(t *testing.T) {
	lower := ltMap(map[string]string{"etc/hosts": "h", "etc/motd": "m", "var/cache/a": "a", "z": "z"})
	o, err := New(afero.NewMemMapFs(), []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	ltMust(t, afero.WriteFile(o, "etc/hosts", []byte("hosts"), 0o600))
	ltMust(t, o.Remove("etc/motd"))
	ltMust(t, o.RemoveAll("var/cache"))
	ltMust(t, o.Mkdir("var/cache", 0o777|fs.ModeSticky))
	ltMust(t, afero.WriteFile(o, "var/cache/new", []byte("n"), 0o644))
	ltMust(t, o.Chmod("z", 0o755|fs.ModeSetuid))
	want := []string{
		"etc/ 5 555 0",
		"etc/.wh.motd 0 644 0",
		"etc/hosts 0 644 5",
		"var/ 5 555 0",
		"var/cache/ 5 1777 0",
		"var/cache/.wh..wh..opq 0 644 0",
		"var/cache/new 0 644 1",
		"z 0 4755 1",
	}
	hdrs := ltHeaders(t, ltExport(t, o))
	if got := ltListing(hdrs); !slices.Equal(got, want) {
		t.Errorf("exported entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, h := range hdrs {
		if h.Uname != "" || h.Gname != "" || !h.AccessTime.IsZero() || h.ModTime.Nanosecond() != 0 {
			t.Errorf("%s: header %+v carries host details", h.Name, h)
		}
	}
}

// TestExportLayerDropsIdleWhiteouts checks that whiteouts that hide nothing
// are not exported: the kernel lists them as broken entries.
func TestExportLayerDropsIdleWhiteouts(t *testing.T) {
	upper := afero.NewMemMapFs()
	o, err := New(upper, []afero.Fs{ltMap(map[string]string{"d/a": "a", "d/b": "b", "x": "x"})})
	if err != nil {
		t.Fatal(err)
	}
	ltMust(t, o.Remove("d/b"))
	ltMust(t, o.Rename("d", "e"))
	ltMust(t, o.Remove("x"))
	ltFill(t, upper, map[string]string{".wh.nothing": ""})
	want := []string{".wh.d 0 644 0", ".wh.x 0 644 0", "e/ 5 555 0", "e/.wh..wh..opq 0 644 0", "e/a 0 644 1"}
	if got := ltListing(ltHeaders(t, ltExport(t, o))); !slices.Equal(got, want) {
		t.Errorf("exported %q, want %q", got, want)
	}
}

func TestExportLayerDeterministic(t *testing.T) {
	build := func() *Overlay {
		o, err := New(afero.NewMemMapFs(), []afero.Fs{ltMap(map[string]string{"a/b": "b", "a/c": "c", "d": "d"})})
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"q", "a/x", "m", "a/b"} {
			ltMust(t, afero.WriteFile(o, name, []byte(name), 0o644))
		}
		ltMust(t, o.Remove("d"))
		ltMust(t, o.Remove("a/c"))
		return o
	}
	o := build()
	first := ltExport(t, o)
	if again := ltExport(t, o); !bytes.Equal(first, again) {
		t.Errorf("exporting the same upper twice gave different bytes")
	}
	clamp := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	a := ltExport(t, o, ClampTimes(clamp))
	time.Sleep(1100 * time.Millisecond) // the second overlay's files are a second younger
	b := ltExport(t, build(), ClampTimes(clamp))
	if !bytes.Equal(a, b) {
		t.Errorf("the same changes made at different times exported to different bytes")
	}
	for _, h := range ltHeaders(t, a) {
		if !h.ModTime.Equal(clamp) {
			t.Errorf("%s: mtime %v, want it clamped to %v", h.Name, h.ModTime, clamp)
		}
	}
}

func TestExportLayerClampKeepsOlderTimes(t *testing.T) {
	old := time.Date(1999, 5, 5, 5, 5, 5, 500, time.UTC)
	o, err := New(afero.NewMemMapFs(), []afero.Fs{ltMap(map[string]string{"x": "x"})})
	if err != nil {
		t.Fatal(err)
	}
	ltMust(t, o.Chtimes("x", old, old))
	hdrs := ltHeaders(t, ltExport(t, o, ClampTimes(old.Add(time.Hour))))
	if len(hdrs) != 1 || !hdrs[0].ModTime.Equal(old.Truncate(time.Second)) {
		t.Errorf("exported %v, want x with mtime %v", ltListing(hdrs), old.Truncate(time.Second))
	}
}

func TestExportLayerOnDisk(t *testing.T) {
	o, err := New(ltDisk(t), []afero.Fs{ltMap(map[string]string{"bin/sh": "sh"})})
	if err != nil {
		t.Fatal(err)
	}
	ltMust(t, o.SymlinkIfPossible("/bin/sh", "bin/bash"))
	ltMust(t, afero.WriteFile(o, "owned", []byte("o"), 0o640))
	canChown := os.Geteuid() == 0
	if canChown {
		ltMust(t, o.Chown("owned", 1234, 5678))
	}
	hdrs := ltHeaders(t, ltExport(t, o))
	want := []string{"bin/ 5 555 0", "bin/bash 2 777 0", "owned 0 640 1"}
	if got := ltListing(hdrs); !slices.Equal(got, want) {
		t.Fatalf("exported %q, want %q", got, want)
	}
	if hdrs[1].Linkname != "/bin/sh" {
		t.Errorf("bin/bash links to %q, want %q", hdrs[1].Linkname, "/bin/sh")
	}
	if canChown && (hdrs[2].Uid != 1234 || hdrs[2].Gid != 5678) {
		t.Errorf("owned: owner %d:%d, want 1234:5678", hdrs[2].Uid, hdrs[2].Gid)
	}
}

func TestExportLayerReadOnlyIsEmpty(t *testing.T) {
	o, err := New(nil, []afero.Fs{ltMap(map[string]string{"x": "x"})})
	if err != nil {
		t.Fatal(err)
	}
	if b := ltExport(t, o); !bytes.Equal(b, make([]byte, 1024)) {
		t.Errorf("ExportLayer(read-only) = %d bytes, want an empty archive", len(b))
	}
}

// TestExportLayerStreams checks that a large file is streamed, not held in
// memory.
func TestExportLayerStreams(t *testing.T) {
	upper := ltDisk(t)
	o, err := New(upper, []afero.Fs{ltMap(map[string]string{"x": "x"})})
	if err != nil {
		t.Fatal(err)
	}
	f, err := o.Create("big")
	ltMust(t, err)
	ltMust(t, f.Truncate(32<<20))
	ltMust(t, f.Close())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ltMust(t, ExportLayer(io.Discard, o))
	runtime.ReadMemStats(&after)
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 8<<20 {
		t.Errorf("exporting a 32 MiB file allocated %d MiB", grown>>20)
	}
}

// TestExportLayerWriterError checks that a failing writer stops the export
// with its error.
func TestExportLayerWriterError(t *testing.T) {
	o, err := New(afero.NewMemMapFs(), []afero.Fs{ltMap(map[string]string{"x": "x"})})
	if err != nil {
		t.Fatal(err)
	}
	ltMust(t, afero.WriteFile(o, "y", bytes.Repeat([]byte("y"), 4096), 0o644))
	err = ExportLayer(ltFailingWriter{}, o)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("ExportLayer(failing writer) = %v, want the writer's error", err)
	}
}

// ltFailingWriter fails every write.
type ltFailingWriter struct{}

func (ltFailingWriter) Write([]byte) (int, error) { return 0, syscall.ENOSPC }

// TestRoundTrip checks, for random upper states over random image-layer
// lowers, that applying the exported upper to the flattened lowers gives
// the flattened merged view, that the exported layer stacked as a TarFs
// lower gives it too, and that Changes agrees with the layer.
func TestRoundTrip(t *testing.T) {
	n := 300
	if testing.Short() {
		n = 40
	}
	for seed := range n {
		t.Run(strconv.Itoa(seed), func(t *testing.T) { ltRoundTrip(t, uint64(seed), afero.NewMemMapFs) })
	}
}

// TestRoundTripOnDisk is TestRoundTrip with disk uppers, which hold
// symlinks, and disk destinations.
func TestRoundTripOnDisk(t *testing.T) {
	n := 40
	if testing.Short() {
		n = 5
	}
	for seed := range n {
		t.Run(strconv.Itoa(seed), func(t *testing.T) {
			ltRoundTrip(t, uint64(seed), func() afero.Fs { return ltDisk(t) })
		})
	}
}

// ltRoundTrip runs one random round trip; newFs makes the upper and the
// destinations.
func ltRoundTrip(t *testing.T, seed uint64, newFs func() afero.Fs) {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	lowers := []afero.Fs{ltRandomLayer(t, r, true), ltRandomLayer(t, r, false)}
	o, err := New(newFs(), lowers)
	if err != nil {
		t.Fatal(err)
	}
	log := ltRandomOps(r, o, 40)
	ro, err := New(nil, lowers)
	if err != nil {
		t.Fatal(err)
	}
	applied := newFs()
	ltMust(t, Flatten(applied, ro))
	before, err := ltWalk(applied)
	ltMust(t, err)

	layer := ltExport(t, o)
	ltMust(t, ApplyLayer(applied, bytes.NewReader(layer)))
	want := newFs()
	ltMust(t, Flatten(want, o))
	if err := ltDiff(want, applied, true); err != nil {
		t.Fatalf("ops:\n%s\nApplyLayer(lowers, ExportLayer(upper)) differs from the merged view:\n%v", log, err)
	}
	restacked := newFs()
	ltMust(t, Flatten(restacked, ltRestack(t, layer, lowers)))
	if err := ltDiff(want, restacked, true); err != nil {
		t.Fatalf("ops:\n%s\nthe layer stacked as a TarFs lower differs from the merged view:\n%v", log, err)
	}
	after, err := ltWalk(want)
	ltMust(t, err)
	if err := ltCheckChanges(o, ltHeaders(t, layer), before, after); err != nil {
		t.Fatalf("ops:\n%s\nChanges() disagrees with the layer:\n%v", log, err)
	}
}

// ltRestack returns a read-only overlay of the layer over lowers.
func ltRestack(t harnessTB, layer []byte, lowers []afero.Fs) *Overlay {
	t.Helper()
	tfs, err := NewTarFs(bytes.NewReader(layer), int64(len(layer)))
	if err != nil {
		t.Fatalf("NewTarFs(exported layer): %v", err)
	}
	o, err := New(nil, append([]afero.Fs{tfs}, lowers...))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return o
}

// ltPool is the names random trees and operations use: few, so that they
// collide often.
var ltPool = []string{"a", "b", "c"}

// ltRandomLayer returns a random image layer in a MemMapFs; with markers
// set it holds whiteouts and opaque directories too.
func ltRandomLayer(t testing.TB, r *rand.Rand, markers bool) afero.Fs {
	t.Helper()
	m := afero.NewMemMapFs()
	ltMust(t, ltRandomDir(r, newLayer(m), ".", 0, markers))
	return m
}

// ltRandomDir fills the directory dir of l at random.
func ltRandomDir(r *rand.Rand, l layer, dir string, depth int, markers bool) error {
	if markers && r.IntN(5) == 0 {
		if err := l.createEmpty(join(dir, opaqueMarker)); err != nil {
			return err
		}
	}
	for _, name := range ltPool {
		p := join(dir, name)
		var err error
		switch k := r.IntN(6); {
		case k < 2:
			err = ltRandomFile(r, l, p)
		case k == 2 && depth < 2:
			if err = l.fs.Mkdir(l.path(p), ltDirModes[r.IntN(len(ltDirModes))]); err == nil {
				err = ltRandomDir(r, l, p, depth+1, markers)
			}
		case k == 3 && markers:
			err = l.createEmpty(join(dir, whiteoutPrefix+name))
		}
		if err != nil {
			return err
		}
	}
	mt := ltRandomTime(r)
	return l.fs.Chtimes(l.path(dir), mt, mt)
}

// ltRandomFile writes a random file p into l.
func ltRandomFile(r *rand.Rand, l layer, p string) error {
	data := strings.Repeat(p, r.IntN(4))
	if err := afero.WriteFile(l.fs, l.path(p), []byte(data), ltFileModes[r.IntN(len(ltFileModes))]); err != nil {
		return err
	}
	mt := ltRandomTime(r)
	return l.fs.Chtimes(l.path(p), mt, mt)
}

// The modes random files and directories get.
var (
	ltFileModes = []fs.FileMode{0o644, 0o600, 0o755}
	ltDirModes  = []fs.FileMode{0o755, 0o700, 0o750}
)

// ltRandomTime returns a random time in 2023.
func ltRandomTime(r *rand.Rand) time.Time {
	return ltTime.Add(-time.Duration(r.IntN(300*24*3600)) * time.Second)
}

// ltRandomPath returns a random name one to three components deep.
func ltRandomPath(r *rand.Rand) string {
	parts := make([]string, 1+r.IntN(3))
	for i := range parts {
		parts[i] = ltPool[r.IntN(len(ltPool))]
	}
	return strings.Join(parts, "/")
}

// ltRandomOps runs n random operations on o, ignoring their errors, and
// returns their log.
func ltRandomOps(r *rand.Rand, o *Overlay, n int) string {
	var log strings.Builder
	for range n {
		p, q := ltRandomPath(r), ltRandomPath(r)
		var err error
		var op string
		switch r.IntN(11) {
		case 10:
			target := "/" + q
			if r.IntN(2) == 0 {
				target = baseOf(q)
			}
			op, err = "symlink "+target+" "+p, o.SymlinkIfPossible(target, p)
		case 0:
			op, err = "write "+p, afero.WriteFile(o, p, []byte(q), ltFileModes[r.IntN(3)])
		case 1:
			op, err = "append "+p, ltAppend(o, p, q)
		case 2:
			op, err = "remove "+p, o.Remove(p)
		case 3:
			op, err = "removeAll "+p, o.RemoveAll(p)
		case 4:
			op, err = "mkdir "+p, o.Mkdir(p, ltDirModes[r.IntN(3)])
		case 5:
			op, err = "mkdirAll "+p, o.MkdirAll(p, ltDirModes[r.IntN(3)])
		case 6:
			op, err = "rename "+p+" "+q, o.Rename(p, q)
		case 7:
			op, err = "chmod "+p, o.Chmod(p, ltFileModes[r.IntN(3)])
		case 8:
			mt := ltRandomTime(r)
			op, err = "chtimes "+p, o.Chtimes(p, mt, mt)
		default:
			op, err = "truncate "+p, ltTruncate(o, p)
		}
		fmt.Fprintf(&log, "%s: %v\n", op, err)
	}
	return log.String()
}

// ltAppend appends data to the file name of fsys.
func ltAppend(fsys afero.Fs, name, data string) error {
	f, err := fsys.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// ltTruncate opens the file name of fsys with O_TRUNC.
func ltTruncate(fsys afero.Fs, name string) error {
	f, err := fsys.OpenFile(name, os.O_RDWR|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// ltLayerNames sorts a layer's entries out: the names it holds with their
// tar types, the names its whiteouts hide, and its opaque directories.
func ltLayerNames(hdrs []*tar.Header) (entries map[string]byte, whiteouts, opaques map[string]bool) {
	entries, whiteouts, opaques = map[string]byte{}, map[string]bool{}, map[string]bool{}
	for _, h := range hdrs {
		name := strings.TrimSuffix(h.Name, "/")
		dir, base := parentOf(name), baseOf(name)
		if base == opaqueMarker {
			opaques[dir] = true
		} else if hidden, ok := hiddenName(base); ok {
			whiteouts[join(dir, hidden)] = true
		} else {
			entries[name] = h.Typeflag
		}
	}
	return entries, whiteouts, opaques
}

// ltCheckChanges checks o's changes against the exported layer hdrs and
// the trees before (the lowers) and after (the merged view).
func ltCheckChanges(o *Overlay, hdrs []*tar.Header, before, after map[string]ltNode) error {
	changes, err := o.Changes()
	if err != nil {
		return err
	}
	entries, whiteouts, opaques := ltLayerNames(hdrs)
	kinds := map[string]ChangeKind{}
	var errs []error
	for _, c := range changes {
		kinds[c.Path] = c.Kind
		if err := ltCheckChange(c, entries, whiteouts, opaques, before, after); err != nil {
			errs = append(errs, err)
		}
	}
	for name, typ := range entries {
		if k := kinds[name]; typ != tar.TypeDir && k != Added && k != Modified {
			errs = append(errs, fmt.Errorf("%s: in the layer, but not added or modified", name))
		}
	}
	for _, p := range ltKeys(before, after) {
		_, inAfter := after[p]
		deleted := !inAfter && (whiteouts[p] || ltUnderOpaque(p, opaques))
		if deleted && !ltCovered(p, kinds, before, after) {
			errs = append(errs, fmt.Errorf("%s: deleted by the layer, but not reported", p))
		}
		if before[p] != after[p] && !ltCovered(p, kinds, before, after) {
			errs = append(errs, fmt.Errorf("%s: changed (%+v to %+v), but not reported", p, before[p], after[p]))
		}
	}
	return errors.Join(errs...)
}

// ltCheckChange checks one change against the layer and the trees.
func ltCheckChange(c Change, entries map[string]byte, whiteouts, opaques map[string]bool, before, after map[string]ltNode) error {
	_, inBefore := before[c.Path]
	_, inAfter := after[c.Path]
	_, inLayer := entries[c.Path]
	var ok bool
	switch c.Kind {
	case Added:
		ok = !inBefore && inAfter && inLayer
	case Modified:
		ok = inBefore && inAfter && inLayer
	case Deleted:
		ok = inBefore && !inAfter && (whiteouts[c.Path] || ltUnderOpaque(c.Path, opaques))
	}
	if !ok {
		return fmt.Errorf("%v: before=%v after=%v in layer=%v", c, inBefore, inAfter, inLayer)
	}
	return nil
}

// ltUnderOpaque reports whether p lies in an opaque directory of the layer,
// at any depth.
func ltUnderOpaque(p string, opaques map[string]bool) bool {
	for d := parentOf(p); ; d = parentOf(d) {
		if opaques[d] {
			return true
		}
		if d == "." {
			return false
		}
	}
}

// ltCovered reports whether the change of p is reported: as itself, or by
// a deleted ancestor, or by an ancestor whose type changed.
func ltCovered(p string, kinds map[string]ChangeKind, before, after map[string]ltNode) bool {
	if kinds[p] != 0 {
		return true
	}
	for a := parentOf(p); a != "."; a = parentOf(a) {
		if kinds[a] == Deleted || kinds[a] != 0 && before[a].mode.Type() != after[a].mode.Type() {
			return true
		}
	}
	return false
}
