package overlay

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"

	"github.com/spf13/afero"
	"golang.org/x/sys/unix"
	"pgregory.net/rapid"
)

// kernelFormatStack is an overlay in the kernel format over lowers in the
// kernel's layout, all directories on the host, so that the kernel can be
// mounted on the very same directories.
type kernelFormatStack struct {
	base   string   // a short directory holding everything, for mount options
	lowers []string // the lower directories, topmost first
	upper  string   // the upper directory
	o      *Overlay
}

// newKernelFormatStack builds lowers (topmost first) in the kernel's layout
// and opens an Overlay with FormatKernel over them and an empty upper.
func newKernelFormatStack(tb harnessTB, lowers ...layerSpec) *kernelFormatStack {
	tb.Helper()
	s := buildKernelFormatDirs(tb, "ovlf-", lowers)
	s.o = s.open(tb, nil)
	return s
}

// buildKernelFormatDirs writes lowers (topmost first) in the kernel's layout
// and an empty upper into a fresh short directory named with prefix.
func buildKernelFormatDirs(tb harnessTB, prefix string, lowers []layerSpec) *kernelFormatStack {
	tb.Helper()
	base, err := os.MkdirTemp("", prefix)
	if err != nil {
		tb.Fatalf("temp dir: %v", err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(base) })
	s := &kernelFormatStack{base: base, upper: filepath.Join(base, "u")}
	for i, spec := range lowers {
		dir := filepath.Join(base, fmt.Sprintf("l%d", i+1))
		if err := os.Mkdir(dir, 0o755); err != nil {
			tb.Fatalf("%v", err)
		}
		writeDiskLayer(tb, dir, spec, layoutKernel)
		s.lowers = append(s.lowers, dir)
	}
	if err := os.Mkdir(s.upper, 0o755); err != nil {
		tb.Fatalf("%v", err)
	}
	return s
}

// open opens the Overlay with FormatKernel over the stack's directories.
func (s *kernelFormatStack) open(tb harnessTB, ls []afero.Fs) *Overlay {
	tb.Helper()
	if ls == nil {
		for _, dir := range s.lowers {
			ls = append(ls, afero.NewBasePathFs(afero.NewOsFs(), dir))
		}
	}
	o, err := New(afero.NewBasePathFs(afero.NewOsFs(), s.upper), ls, WithFormat(FormatKernel))
	if err != nil {
		tb.Fatalf("New with FormatKernel: %v", err)
	}
	return o
}

// mount mounts the kernel overlay over the stack's lowers and upper with a
// fresh work directory and the given extra options, and returns the view
// and a function that unmounts it (also run when tb ends). The overlay
// may be alive: between its calls, a kernel-format upper must not hold the
// overlay's work directory, which the kernel would show.
func (s *kernelFormatStack) mount(tb harnessTB, extra string) (afero.Fs, func()) {
	tb.Helper()
	if _, err := os.Lstat(filepath.Join(s.upper, workDir)); !errors.Is(err, fs.ErrNotExist) {
		tb.Fatalf("between calls, the kernel-format upper holds the work directory (%v): the kernel would show it", err)
	}
	work, err := os.MkdirTemp(s.base, "w")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	mnt, err := os.MkdirTemp(s.base, "m")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s%s", strings.Join(s.lowers, ":"), s.upper, work, extra)
	if err := syscall.Mount("overlay", mnt, "overlay", 0, opts); err != nil {
		tb.Fatalf("mount -t overlay overlay -o %s %s: %v", opts, mnt, err)
	}
	mounted := true
	unmount := func() {
		if mounted {
			mounted = false
			if err := syscall.Unmount(mnt, 0); err != nil {
				_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
			}
		}
	}
	tb.Cleanup(unmount)
	return newOSDirFs(mnt), unmount
}

// TestKernelFormatNew checks which uppers FormatKernel accepts.
func TestKernelFormatNew(t *testing.T) {
	lower := afero.FromIOFS{FS: fstest.MapFS{"a": {Data: []byte("x")}}}
	_, err := New(afero.NewMemMapFs(), []afero.Fs{lower}, WithFormat(FormatKernel))
	if err == nil || !strings.Contains(err.Error(), "RealPath") {
		t.Errorf("New(MemMapFs, FormatKernel) = %v, want an error naming RealPath", err)
	}
	if _, err := New(afero.NewBasePathFs(afero.NewOsFs(), t.TempDir()), []afero.Fs{lower}, WithFormat(FormatKernel)); err != nil {
		t.Errorf("New(BasePathFs, FormatKernel) = %v, want nil", err)
	}
	if _, err := New(nil, []afero.Fs{lower}, WithFormat(FormatKernel)); err != nil {
		t.Errorf("New(nil, FormatKernel) = %v, want nil", err)
	}
}

// isWhiteoutDev reports whether the host path p is a whiteout device.
func isWhiteoutDev(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && isWhiteoutInfo(fi)
}

// opaqueOnDisk reports whether the host directory p has trusted.overlay.opaque=y.
func opaqueOnDisk(p string) bool {
	var buf [4]byte
	n, err := unix.Lgetxattr(p, kernelOpaqueXattr, buf[:])
	return err == nil && string(buf[:n]) == "y"
}

// TestKernelFormatMarkers checks the markers that operations leave in a
// kernel-format upper on disk.
func TestKernelFormatMarkers(t *testing.T) {
	kernelOracle(t) // needs root, as the kernel's own markers do
	lower := layerSpec{
		"f":   specFile("f", 0o644),
		"d":   specDir(0o755),
		"d/x": specFile("x", 0o644),
		"e":   specDir(0o755),
		"e/y": specFile("y", 0o644),
	}
	s := newKernelFormatStack(t, lower)
	u := func(p string) string { return filepath.Join(s.upper, p) }
	if err := s.o.Remove("f"); err != nil {
		t.Fatalf("Remove(f) = %v", err)
	}
	if !isWhiteoutDev(u("f")) {
		t.Errorf("after Remove(f): upper f is not a whiteout device")
	}
	if _, err := os.Lstat(u(".wh.f")); err == nil {
		t.Errorf("after Remove(f): an OCI whiteout .wh.f exists in a kernel-format upper")
	}
	if err := afero.WriteFile(s.o, "f", []byte("new"), 0o600); err != nil {
		t.Fatalf("WriteFile(f) over a whiteout = %v", err)
	}
	if got, err := os.ReadFile(u("f")); err != nil || string(got) != "new" {
		t.Errorf("upper f = %q, %v; want \"new\"", got, err)
	}
	if err := s.o.RemoveAll("d"); err != nil {
		t.Fatalf("RemoveAll(d) = %v", err)
	}
	if err := s.o.Mkdir("d", 0o750); err != nil {
		t.Fatalf("Mkdir(d) over a whiteout = %v", err)
	}
	if !opaqueOnDisk(u("d")) {
		t.Errorf("Mkdir(d) over a deleted lower dir: upper d is not opaque")
	}
	if names, err := afero.ReadDir(s.o, "d"); err != nil || len(names) != 0 {
		t.Errorf("ReadDir(d) = %v, %v; want empty", names, err)
	}
	if err := s.o.Rename("e", "e2"); err != nil {
		t.Fatalf("Rename(e, e2) = %v", err)
	}
	if !isWhiteoutDev(u("e")) || opaqueOnDisk(u("e2")) {
		t.Errorf("Rename(e, e2): want a whiteout device at e and a non-opaque e2")
	}
	buf := make([]byte, 64)
	if n, err := unix.Lgetxattr(u("e2"), "trusted.overlay.redirect", buf); err != nil || string(buf[:n]) != "/e" {
		t.Errorf("Rename(e, e2): upper e2 redirect = %q, %v; want \"/e\"", buf[:n], err)
	}
	if _, err := os.Lstat(u("e2/y")); err == nil {
		t.Errorf("Rename(e, e2): the lower file e/y was copied up; a redirect needs no copy")
	}
	if got, err := afero.ReadFile(s.o, "e2/y"); err != nil || string(got) != "y" {
		t.Errorf("ReadFile(e2/y) = %q, %v; want \"y\"", got, err)
	}
	k, _ := s.mount(t, ",redirect_dir=on")
	if err := checkSameTree(k, s.o); err != nil {
		t.Errorf("the kernel mounted on the upper shows another tree:\n%v", err)
	}
}

// TestKernelFormatCopyUpXattrs checks that a copy-up into a kernel-format
// upper carries the lower file's xattrs, but never the overlay's own.
func TestKernelFormatCopyUpXattrs(t *testing.T) {
	kernelOracle(t)
	s := newKernelFormatStack(t, layerSpec{"f": specFile("f", 0o644)})
	lf := filepath.Join(s.lowers[0], "f")
	if err := unix.Lsetxattr(lf, "user.note", []byte("kept"), 0); err != nil {
		t.Skipf("the file system holds no user xattrs: %v", err)
	}
	if err := unix.Lsetxattr(lf, "trusted.overlay.origin", []byte("x"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	if err := s.o.Chmod("f", 0o600); err != nil {
		t.Fatalf("Chmod(f) = %v", err)
	}
	uf := filepath.Join(s.upper, "f")
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(uf, "user.note", buf); err != nil || string(buf[:n]) != "kept" {
		t.Errorf("upper f user.note = %q, %v; want \"kept\"", buf[:n], err)
	}
	if _, err := unix.Lgetxattr(uf, "trusted.overlay.origin", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("upper f trusted.overlay.origin: getxattr = %v, want ENODATA (never copied)", err)
	}
}

// TestKernelFormatRandom runs random operations through an Overlay with
// FormatKernel on directories, in lockstep with a kernel overlay of its
// own, then mounts the kernel overlay (redirect_dir=on) on the Overlay's
// lowers and upper with a fresh work directory: it must show the tree the
// Overlay shows.
func TestKernelFormatRandom(t *testing.T) {
	kernelOracle(t)
	rapidDefault(t, "rapid.checks", "RAPID_CHECKS", "300")
	rapidDefault(t, "rapid.shrinktime", "RAPID_SHRINKTIME", randomShrinkTime)
	rapid.Check(t, func(rt *rapid.T) {
		l2 := drawLayer(rt, "L2", nil, true)
		lowers := []layerSpec{drawLayer(rt, "L1", l2, true), l2}
		oracle, err := kernelMount(rt, lowers...)
		if err != nil {
			rt.Fatalf("mounting the kernel oracle: %v", err)
		}
		s := newKernelFormatStack(rt, lowers...)
		ls := &lockstep{oracle: oracle, subject: s.o, oracleName: "kernel", subjectName: "overlay (kernel format)", lowers: lowers}
		ls.randomOps(rt, 40)
		k, _ := s.mount(rt, ",redirect_dir=on")
		if err := errors.Join(checkSameTree(k, s.o), checkSameLookups(k, s.o)); err != nil {
			rt.Fatalf("the kernel mounted on the overlay's upper shows another tree:\n%v", err)
		}
	})
}

// TestKernelFormatReadsKernelUpper applies random operations through a
// kernel overlay mount, unmounts it, and opens the same directories with
// an Overlay in FormatKernel: it must show what the kernel showed (the
// kernel mounted again on the same upper). The kernel mount uses
// redirect_dir=on, so renamed merged directories carry redirects.
func TestKernelFormatReadsKernelUpper(t *testing.T) {
	kernelOracle(t)
	rapidDefault(t, "rapid.checks", "RAPID_CHECKS", "300")
	rapid.Check(t, func(rt *rapid.T) {
		l2 := drawLayer(rt, "L2", nil, true)
		lowers := []layerSpec{drawLayer(rt, "L1", l2, true), l2}
		s := buildKernelFormatDirs(rt, "ovlr-", lowers)
		k, unmount := s.mount(rt, ",redirect_dir=on")
		var done []string
		for i, n := 0, rapid.IntRange(0, 30).Draw(rt, "ops"); i < n; i++ {
			op := drawWeightedOp(rt)
			if climbsOut(k, op) {
				continue
			}
			res, err := applyOp(k, op, true)
			if err != nil {
				rt.Fatalf("kernel %v: %v", op, err)
			}
			done = append(done, fmt.Sprintf("%v: %v", op, res))
		}
		unmount()
		o := s.open(rt, nil)
		k, _ = s.mount(rt, ",redirect_dir=on")
		err := errors.Join(checkSameTree(k, o), checkSameLookups(k, o))
		if err != nil {
			rt.Fatalf("the overlay shows another tree than the kernel did:\n%v\nlowers:\n%s\n%s\noperations:\n  %s",
				err, lowers[0], lowers[1], strings.Join(done, "\n  "))
		}
	})
}

// TestConvertRoundTrip builds random OCI-format uppers through the Overlay
// on disk, converts them to the kernel format, mounts the kernel on them
// (it must show the tree the Overlay showed over the OCI form), then
// converts them back: the upper must be what it was.
func TestConvertRoundTrip(t *testing.T) {
	kernelOracle(t)
	rapidDefault(t, "rapid.checks", "RAPID_CHECKS", "300")
	rapid.Check(t, func(rt *rapid.T) {
		l2 := drawLayer(rt, "L2", nil, true)
		lowers := []layerSpec{drawLayer(rt, "L1", l2, true), l2}
		s := newKernelFormatStack(rt, lowers...)
		upperFs := afero.NewBasePathFs(afero.NewOsFs(), s.upper)
		var ls []afero.Fs
		for _, dir := range s.lowers {
			ls = append(ls, afero.NewBasePathFs(afero.NewOsFs(), dir))
		}
		o, err := New(upperFs, ls) // the OCI format
		if err != nil {
			rt.Fatalf("New: %v", err)
		}
		for i, n := 0, rapid.IntRange(0, 30).Draw(rt, "ops"); i < n; i++ {
			op := drawWeightedOp(rt)
			if climbsOut(o, op) {
				continue
			}
			if _, err := applyOp(o, op, true); err != nil {
				rt.Fatalf("%v: %v", op, err)
			}
		}
		if err := os.Remove(filepath.Join(s.upper, workDir)); err != nil {
			rt.Fatalf("%v", err)
		}
		snap := filepath.Join(s.base, "snap")
		if out, err := exec.Command("cp", "-a", s.upper, snap).CombinedOutput(); err != nil {
			rt.Fatalf("cp -a: %v: %s", err, out)
		}
		ociView, err := New(nil, append([]afero.Fs{afero.NewBasePathFs(afero.NewOsFs(), snap)}, ls...))
		if err != nil {
			rt.Fatalf("New over the OCI snapshot: %v", err)
		}
		if err := Convert(upperFs, FormatKernel); err != nil {
			rt.Fatalf("Convert to kernel: %v", err)
		}
		k, unmount := s.mount(rt, ",redirect_dir=on")
		if err := errors.Join(checkSameTree(k, ociView), checkSameLookups(k, ociView)); err != nil {
			rt.Fatalf("the kernel over the converted upper shows another tree than the overlay over the OCI form:\n%v", err)
		}
		unmount()
		if err := Convert(upperFs, FormatOCI); err != nil {
			rt.Fatalf("Convert to OCI: %v", err)
		}
		// The kernel format keeps an opaque directory as an xattr, with no
		// file to carry the marker's owner, so Convert makes the marker as
		// the process makes any file: in a set-group-ID directory it takes
		// the directory's group. Only a marker's name means anything, to the
		// overlay and to whoever applies the layer, so both sides' markers
		// are made root's before the comparison.
		for _, dir := range []string{snap, s.upper} {
			if err := chownOpaqueMarkers(dir); err != nil {
				rt.Fatalf("%v", err)
			}
		}
		if err := checkSameTree(newOSDirFs(snap), newOSDirFs(s.upper)); err != nil {
			rt.Fatalf("OCI → kernel → OCI changed the upper:\n%v", err)
		}
	})
}

// chownOpaqueMarkers gives every opaque marker under the host directory
// root to root:root.
func chownOpaqueMarkers(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == opaqueMarker {
			err = os.Lchown(p, 0, 0)
		}
		return err
	})
}

// checkSameLookups compares Lstat of every name of the operation pool on
// both sides: a tree walk follows listings only, so a name hidden from a
// listing but found by a lookup would escape it.
func checkSameLookups(want, got afero.Fs) error {
	var errs []error
	for _, p := range poolPaths {
		w, werr := applyOp(want, doLstat(p), true)
		g, gerr := applyOp(got, doLstat(p), true)
		if werr != nil || gerr != nil || w != g {
			errs = append(errs, fmt.Errorf("Lstat(%q) = %v (%v), want %v (%v)", p, g, gerr, w, werr))
		}
	}
	return errors.Join(errs...)
}

// drawWeightedOp draws an operation of any kind, renames (which make
// redirects) and directory creations being more frequent.
func drawWeightedOp(rt *rapid.T) fsOp {
	kinds := []fsOpKind{fopRename, fopRename, fopRename, fopRename, fopMkdir, fopMkdir}
	for k := fsOpKind(0); k < fopCount; k++ {
		kinds = append(kinds, k)
	}
	return drawOp(rt, rapid.SampledFrom(kinds).Draw(rt, "kind"))
}

// TestKernelFormatChangesAndExport checks that Changes and ExportLayer read
// a kernel-format upper's markers: they must report what they report for
// the same operations on an OCI-format upper.
func TestKernelFormatChangesAndExport(t *testing.T) {
	kernelOracle(t)
	lower := layerSpec{"f": specFile("f", 0o644), "d": specDir(0o755), "d/x": specFile("x", 0o644), "g": specFile("g", 0o644)}
	ops := func(o *Overlay) {
		t.Helper()
		for _, err := range []error{o.Remove("f"), o.RemoveAll("d"), o.Mkdir("d", 0o755), o.Chmod("g", 0o600)} {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	entries := func(o *Overlay) string {
		t.Helper()
		var buf bytes.Buffer
		if err := ExportLayer(&buf, o); err != nil {
			t.Fatalf("ExportLayer: %v", err)
		}
		var names []string
		tr := tar.NewReader(&buf)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, fmt.Sprintf("%s %c %o", h.Name, h.Typeflag, h.Mode))
		}
		ch, err := o.Changes()
		if err != nil {
			t.Fatalf("Changes: %v", err)
		}
		return fmt.Sprint(names, ch)
	}
	k := newKernelFormatStack(t, lower)
	ops(k.o)
	oci, err := New(afero.NewBasePathFs(afero.NewOsFs(), t.TempDir()), []afero.Fs{afero.NewBasePathFs(afero.NewOsFs(), k.lowers[0])})
	if err != nil {
		t.Fatal(err)
	}
	ops(oci)
	if got, want := entries(k.o), entries(oci); got != want {
		t.Errorf("kernel format: %s\nwant (OCI format): %s", got, want)
	}
}

// TestKernelFormatMixedLowers runs random operations on an Overlay with
// FormatKernel whose topmost lower is in the OCI layout and the other in
// the kernel's, in lockstep with a kernel overlay over both in the
// kernel's layout: each lower is read in the format it holds.
func TestKernelFormatMixedLowers(t *testing.T) {
	kernelOracle(t)
	rapidDefault(t, "rapid.checks", "RAPID_CHECKS", "100")
	rapid.Check(t, func(rt *rapid.T) {
		l2 := drawLayer(rt, "L2", nil, true)
		lowers := []layerSpec{drawLayer(rt, "L1", l2, true), l2}
		oracle, err := kernelMount(rt, lowers...)
		if err != nil {
			rt.Fatalf("mounting the kernel oracle: %v", err)
		}
		var ls []afero.Fs
		for i, spec := range lowers {
			dir := harnessTempDir(rt)
			layout := layoutKernel
			if i == 0 {
				layout = layoutOCI
			}
			writeDiskLayer(rt, dir, spec, layout)
			ls = append(ls, afero.NewBasePathFs(afero.NewOsFs(), dir))
		}
		o, err := New(afero.NewBasePathFs(afero.NewOsFs(), harnessTempDir(rt)), ls, WithFormat(FormatKernel))
		if err != nil {
			rt.Fatalf("New: %v", err)
		}
		l := &lockstep{oracle: oracle, subject: o, oracleName: "kernel", subjectName: "overlay (mixed lowers)", lowers: lowers}
		if p := l.checkTree(); p != "" {
			rt.Fatal(l.report(p))
		}
		l.randomOps(rt, 20)
	})
}

// TestKernelFormatUserXattr checks WithUserXattr: the markers are
// user.overlay.* xattrs, a merged directory is renamed by copying it up
// (the kernel refuses redirect_dir=on with userxattr), and the kernel
// mounted with userxattr on the same directories shows the Overlay's tree.
func TestKernelFormatUserXattr(t *testing.T) {
	kernelOracle(t)
	s := newKernelFormatStack(t, layerSpec{"d": specDir(0o755), "d/x": specFile("x", 0o644), "e": specDir(0o755), "e/y": specFile("y", 0o644)})
	o, err := New(afero.NewBasePathFs(afero.NewOsFs(), s.upper), []afero.Fs{afero.NewBasePathFs(afero.NewOsFs(), s.lowers[0])},
		WithFormat(FormatKernel), WithUserXattr())
	if err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	for _, err := range []error{o.RemoveAll("d"), o.Mkdir("d", 0o755), o.Rename("e", "e2")} {
		if err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(s.upper, "d"), "user.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("upper d user.overlay.opaque = %q, %v; want \"y\"", buf[:n], err)
	}
	if n, err := unix.Lgetxattr(filepath.Join(s.upper, "e2"), "user.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("upper e2 user.overlay.opaque = %q, %v; want \"y\" (userxattr has no redirects: copied up, opaque)", buf[:n], err)
	}
	if opaqueOnDisk(filepath.Join(s.upper, "d")) {
		t.Errorf("upper d has trusted.overlay.opaque with WithUserXattr")
	}
	k, _ := s.mount(t, ",userxattr")
	if err := errors.Join(checkSameTree(k, o), checkSameLookups(k, o)); err != nil {
		t.Errorf("the kernel (userxattr) shows another tree:\n%v", err)
	}
}

// TestKernelFormatNeedsCapSysAdmin checks that New with FormatKernel fails
// clearly without CAP_SYS_ADMIN, where reading trusted.* xattrs would
// silently find nothing. The capability is dropped from one locked thread,
// which ends with the goroutine.
func TestKernelFormatNeedsCapSysAdmin(t *testing.T) {
	kernelOracle(t)
	dir := t.TempDir()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		data[unix.CAP_SYS_ADMIN/32].Effective &^= 1 << (unix.CAP_SYS_ADMIN % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		_, err := New(afero.NewBasePathFs(afero.NewOsFs(), dir), []afero.Fs{afero.NewMemMapFs()}, WithFormat(FormatKernel))
		errc <- err
	}()
	err := <-errc
	t.Logf("New: %v", err)
	if err == nil || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
		t.Errorf("New(FormatKernel) without CAP_SYS_ADMIN = %v, want an error naming CAP_SYS_ADMIN", err)
	}
}

// randomOps applies up to max weighted random operations in lockstep,
// checking each result and the whole tree after each, and skipping renames
// that would make a symlink climb out of the tree.
func (l *lockstep) randomOps(rt *rapid.T, max int) {
	for i, n := 0, rapid.IntRange(0, max).Draw(rt, "ops"); i < n; i++ {
		op := drawWeightedOp(rt)
		if climbsOut(l.oracle, op) {
			continue
		}
		if _, _, p := l.apply(op); p != "" {
			rt.Fatal(l.report(p))
		}
		if p := l.checkTree(); p != "" {
			rt.Fatal(l.report(p))
		}
	}
}

// TestKernelFormatReplacesWhiteoutsInOneStep checks that creating a name
// over a whiteout device in a kernel-format upper (a file, a directory, a
// symlink, a file or a directory renamed there) never leaves the name
// without both: a watcher looking at the upper directory all along must see
// the device or the new entry, never nothing, which would show the lower
// copy again.
func TestKernelFormatReplacesWhiteoutsInOneStep(t *testing.T) {
	kernelOracle(t)
	s := newKernelFormatStack(t, layerSpec{"x": specFile("lower", 0o644)})
	o := s.o
	ops := []struct {
		name string
		do   func() error
	}{
		{"create", func() error { return afero.WriteFile(o, "x", []byte("new"), 0o644) }},
		{"mkdir", func() error { return o.Mkdir("x", 0o755) }},
		{"symlink", func() error { return o.SymlinkIfPossible("target", "x") }},
		{"rename a file", func() error {
			if err := afero.WriteFile(o, "f", nil, 0o644); err != nil {
				return err
			}
			return o.Rename("f", "x")
		}},
		{"rename a directory", func() error {
			if err := o.Mkdir("d", 0o755); err != nil {
				return err
			}
			return o.Rename("d", "x")
		}},
	}
	host := filepath.Join(s.upper, "x")
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			if err := o.RemoveAll("x"); err != nil { // from here on the upper holds x
				t.Fatalf("RemoveAll: %v", err)
			}
			stop := make(chan struct{})
			gaps := make(chan int)
			go func() {
				n := 0
				for {
					select {
					case <-stop:
						gaps <- n
						return
					default:
					}
					if _, err := os.Lstat(host); errors.Is(err, fs.ErrNotExist) {
						n++
					}
				}
			}()
			for range 200 {
				if err := op.do(); err != nil {
					t.Fatalf("%s over the whiteout: %v", op.name, err)
				}
				if err := o.RemoveAll("x"); err != nil {
					t.Fatalf("RemoveAll: %v", err)
				}
			}
			close(stop)
			if n := <-gaps; n > 0 {
				t.Fatalf("the upper held nothing at x %d times: the lower copy showed through", n)
			}
		})
	}
}

// TestKernelFormatWorkDirOnlyDuringCalls checks that a kernel-format upper
// holds the work directory only while calls use it: after New, after calls
// that build in it (copy-up, removing a directory, creating over a
// whiteout), and after many such calls racing, it is gone.
func TestKernelFormatWorkDirOnlyDuringCalls(t *testing.T) {
	kernelOracle(t)
	s := newKernelFormatStack(t, layerSpec{"f": specFile("lower", 0o644), "d/g": specFile("g", 0o644)})
	work := filepath.Join(s.upper, workDir)
	absent := func(when string) {
		t.Helper()
		if _, err := os.Lstat(work); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s: the upper holds the work directory (%v)", when, err)
		}
	}
	absent("after New")
	if err := afero.WriteFile(s.o, "f", []byte("copied up"), 0o644); err != nil {
		t.Fatal(err)
	}
	absent("after a copy-up")
	if err := s.o.RemoveAll("d"); err != nil {
		t.Fatal(err)
	}
	absent("after removing a directory")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("n%d", i)
			for range 50 {
				if err := s.o.Mkdir(name, 0o755); err != nil {
					t.Error(err)
					return
				}
				if err := s.o.RemoveAll(name); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	absent("after racing calls")
}

// TestMadeOverWhiteoutTakesSetgidGroup checks that a file, a directory and
// a symlink made where a lower name was removed, which the overlay builds in
// its work directory, get what they would get made in place in a
// set-group-ID directory, as the kernel gives them: its group, and for a
// file its own set-user-ID bit.
func TestMadeOverWhiteoutTakesSetgidGroup(t *testing.T) {
	lower := layerSpec{"g": specDir(0o755), "g/f": specFile("x", 0o644), "g/d": specFile("x", 0o644), "g/l": specFile("x", 0o644)}
	subjects := map[string]afero.Fs{
		"OCI upper":           buildSubject(t, diskLayers, lower),
		"kernel-format upper": newKernelFormatStack(t, lower).o,
	}
	for what, o := range subjects {
		steps := []error{o.Chmod("g", 0o775|os.ModeSetgid), o.Chown("g", 0, 1000)}
		for _, n := range []string{"g/f", "g/d", "g/l"} {
			steps = append(steps, o.Remove(n))
		}
		steps = append(steps,
			afero.WriteFile(o, "g/f", []byte("new"), 0o755|os.ModeSetuid),
			o.Mkdir("g/d", 0o755),
			o.(afero.Linker).SymlinkIfPossible("f", "g/l"))
		if err := errors.Join(steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		for name, mode := range map[string]os.FileMode{"g/f": 0o755 | os.ModeSetuid, "g/d": os.ModeDir | 0o755 | os.ModeSetgid, "g/l": os.ModeSymlink} {
			fi, _, err := o.(afero.Lstater).LstatIfPossible(name)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if _, gid, ok := ownerOf(fi); !ok || gid != 1000 {
				t.Errorf("%s: %s has group %d (reported: %v), want 1000, its set-group-ID parent's", what, name, gid, ok)
			}
			if got := fi.Mode() & (os.ModeType | modeBits); mode != os.ModeSymlink && got != mode {
				t.Errorf("%s: %s has mode %v, want %v", what, name, got, mode)
			}
		}
	}
}

// TestConvertKeepsWhiteoutOwner checks that a whiteout keeps its owner
// through Convert both ways, as it keeps its permission bits and times,
// even in a set-group-ID directory, where a new marker would take the
// directory's group.
func TestConvertKeepsWhiteoutOwner(t *testing.T) {
	kernelOracle(t)
	root := t.TempDir()
	dir := filepath.Join(root, "d")
	marker := filepath.Join(dir, whiteoutPrefix+"f")
	for _, err := range []error{
		os.Mkdir(dir, 0o755),
		os.WriteFile(marker, nil, 0o600),
		os.Lchown(marker, 0, 0),
		os.Chown(dir, 0, 1000),
		os.Chmod(dir, 0o775|fs.ModeSetgid),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	upper := afero.NewBasePathFs(afero.NewOsFs(), root)
	owner := func(p string) string {
		t.Helper()
		info, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := info.Sys().(*syscall.Stat_t)
		return fmt.Sprintf("%d:%d %v", st.Uid, st.Gid, info.Mode())
	}
	if err := Convert(upper, FormatKernel); err != nil {
		t.Fatal(err)
	}
	if got, want := owner(filepath.Join(dir, "f")), "0:0 Dcrw-------"; got != want {
		t.Errorf("whiteout device: %s, want %s", got, want)
	}
	if err := Convert(upper, FormatOCI); err != nil {
		t.Fatal(err)
	}
	if got, want := owner(marker), "0:0 -rw-------"; got != want {
		t.Errorf("whiteout marker after the round trip: %s, want %s", got, want)
	}
}

// TestMemUnderBasePathIsNoHostDirectory checks that a BasePathFs over a
// MemMapFs, which has RealPath like a host directory, is not taken for
// one, even where the host holds a directory at the path RealPath gives:
// the overlay must read none of that directory's markers, and write none.
func TestMemUnderBasePathIsNoHostDirectory(t *testing.T) {
	kernelOracle(t)
	host := t.TempDir()
	for _, err := range []error{
		os.Mkdir(filepath.Join(host, "sub"), 0o755),
		unix.Setxattr(filepath.Join(host, "sub"), kernelOpaqueXattr, []byte("y"), 0),
		os.WriteFile(filepath.Join(host, whiteoutPrefix+"x"), nil, 0o644),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	memAtHostPath := func() afero.Fs {
		mem := afero.NewMemMapFs()
		if err := mem.MkdirAll(filepath.Join(host, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		return afero.NewBasePathFs(mem, host)
	}
	t.Run("lower", func(t *testing.T) {
		bottom := afero.NewMemMapFs()
		if err := afero.WriteFile(bottom, "/sub/f", []byte("f"), 0o644); err != nil {
			t.Fatal(err)
		}
		o, err := New(afero.NewMemMapFs(), []afero.Fs{memAtHostPath(), bottom})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := o.Stat("sub/f"); err != nil {
			t.Errorf("Stat(sub/f) = %v: the host directory's opaque xattr hid it", err)
		}
	})
	t.Run("kernel-format upper", func(t *testing.T) {
		if _, err := New(memAtHostPath(), nil, WithFormat(FormatKernel)); err == nil {
			t.Error("New accepted a MemMapFs under a base path as a kernel-format upper")
		}
	})
	t.Run("Convert", func(t *testing.T) {
		err := Convert(memAtHostPath(), FormatKernel)
		if !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("Convert = %v, want ErrUnsupported", err)
		}
		if _, err := os.Lstat(filepath.Join(host, whiteoutPrefix+"x")); err != nil {
			t.Errorf("Convert changed the host directory: %v", err)
		}
	})
}
