package overlay

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/afero"
	"golang.org/x/sys/unix"
	"pgregory.net/rapid"
)

// redirectXattr is a redirect xattr to set on a lower directory: layer is
// the index of the lower (0 topmost), dir the directory, target the value.
type redirectXattr struct {
	layer       int
	dir, target string
}

// redirectCase is one row of TestLowerRedirectRules: lowers in the kernel's
// layout with redirect xattrs set on some directories, the results the
// kernel gives for some operations (pinned, so that a row cannot silently
// stop testing its rule), and operations run afterwards on both sides.
type redirectCase struct {
	name      string
	lowers    []layerSpec
	redirects []redirectXattr
	want      []scenarioStep
	then      []fsOp
	// unlisted says the kernel lists names that it cannot look up (bad
	// redirects), which a tree comparison cannot walk.
	unlisted bool
}

// redirectCases are the rules of following redirects in lowers. As in the
// layers the kernel makes, a redirect's target is whited out in the
// redirecting layer where the row changes files: a file the merged view
// shows under two names is one inode to the kernel, whose copy-up then
// shows under both until the cache forgets it, a kernel quirk.
var redirectCases = []redirectCase{
	{
		name:      "absolute in the topmost lower",
		lowers:    []layerSpec{{"new": specDir(0o755), "new/top": specFile("t", 0o644), whKey("old"): specMarker}, {"old": specDir(0o700), "old/f": specFile("f", 0o644), "new/no": specFile("n", 0o644)}},
		redirects: []redirectXattr{{0, "new", "/old"}},
		want:      []scenarioStep{expect(doReadDirNames("new"), "ok: f top"), expect(doRead("new/f"), "ok: f"), expect(doStat("new/no"), "ENOENT")},
		then:      []fsOp{doRename("new", "n2"), doWrite("n2/f", "w", 0o644), doRename("old", "o2"), doMkdir("new", 0o755)},
	},
	{
		name:      "relative: a sibling",
		lowers:    []layerSpec{{"d": specDir(0o755), "d/rel": specDir(0o755), whKey("d/old"): specMarker}, {"d": specDir(0o755), "d/old": specDir(0o755), "d/old/f": specFile("f", 0o644), "old/g": specFile("g", 0o644)}},
		redirects: []redirectXattr{{0, "d/rel", "old"}},
		want:      []scenarioStep{expect(doReadDirNames("d/rel"), "ok: f"), expect(doReadDirNames("d"), "ok: rel")},
		then:      []fsOp{doRename("d/rel", "r"), doRemoveAll("d"), doWrite("r/f", "x", 0o600)},
	},
	{
		name: "chained across three lowers",
		lowers: []layerSpec{
			{"a": specDir(0o755), "a/1": specFile("1", 0o644), whKey("b"): specMarker},
			{"b": specDir(0o755), "b/2": specFile("2", 0o644), "a/no": specFile("n", 0o644), whKey("c"): specMarker},
			{"c": specDir(0o755), "c/3": specFile("3", 0o644), "b/no": specFile("n", 0o644)},
		},
		redirects: []redirectXattr{{0, "a", "/b"}, {1, "b", "/c"}},
		want:      []scenarioStep{expect(doReadDirNames("a"), "ok: 1 2 3"), expect(doReadDirNames("b"), "ENOENT")},
		then:      []fsOp{doRename("a", "z"), doRename("b", "a"), doRemove("z/3")},
	},
	{
		name: "redirect in a deeper lower only",
		lowers: []layerSpec{
			{"n": specDir(0o755), "n/x": specFile("x", 0o644)},
			{"n": specDir(0o755), "n/y": specFile("y", 0o644), whKey("m"): specMarker},
			{"m": specDir(0o755), "m/z": specFile("z", 0o644), "n/hidden": specFile("h", 0o644)},
		},
		redirects: []redirectXattr{{1, "n", "m"}},
		want:      []scenarioStep{expect(doReadDirNames("n"), "ok: x y z"), expect(doStat("n/hidden"), "ENOENT")},
		then:      []fsOp{doRename("n", "k"), doChmod("k/z", 0o600)},
	},
	{
		name:      "target missing",
		lowers:    []layerSpec{{"n": specDir(0o755), "n/x": specFile("x", 0o644)}, {"n": specDir(0o755), "n/y": specFile("y", 0o644)}},
		redirects: []redirectXattr{{0, "n", "/gone"}},
		want:      []scenarioStep{expect(doReadDirNames("n"), "ok: x"), expect(doStat("n/y"), "ENOENT")},
		then:      []fsOp{doRename("n", "k"), doMkdir("gone", 0o755)},
	},
	{
		name: "opaque directory at the target",
		lowers: []layerSpec{
			{"n": specDir(0o755), whKey("o"): specMarker},
			{"o": specDir(0o755), opqKey("o"): specMarker, "o/p": specFile("p", 0o644)},
			{"o": specDir(0o755), "o/q": specFile("q", 0o644)},
		},
		redirects: []redirectXattr{{0, "n", "/o"}},
		want:      []scenarioStep{expect(doReadDirNames("n"), "ok: p")},
		then:      []fsOp{doRename("n", "k"), doRemoveAll("k/p")},
	},
	{
		name: "whiteout at the target and on the way",
		lowers: []layerSpec{
			{"n": specDir(0o755), "n/x": specFile("x", 0o644), "w": specDir(0o755)},
			{whKey("o"): specMarker, whKey("a"): specMarker},
			{"o": specDir(0o755), "o/q": specFile("q", 0o644), "a/o/q": specFile("q", 0o644)},
		},
		redirects: []redirectXattr{{0, "n", "/o"}, {0, "w", "/a/o"}},
		want:      []scenarioStep{expect(doReadDirNames("n"), "ok: x"), expect(doReadDirNames("w"), "ok")},
		then:      []fsOp{doRename("n", "k"), doRename("w", "n")},
	},
	{
		name: "absolute redirect below an opaque directory resumes the lookup",
		lowers: []layerSpec{
			{"n": specDir(0o755), whKey("a"): specMarker},
			{"a": specDir(0o755), opqKey("a"): specMarker, "a/o": specDir(0o755), "a/o/r": specFile("r", 0o644), whKey("z"): specMarker},
			{"z/q": specFile("q", 0o644), "a/o/hidden": specFile("h", 0o644)},
		},
		redirects: []redirectXattr{{0, "n", "/a/o"}, {1, "a/o", "/z"}},
		want:      []scenarioStep{expect(doReadDirNames("n"), "ok: q r"), expect(doReadDirNames("a/o"), "ENOENT")},
		then:      []fsOp{doRename("n", "k"), doWrite("k/q", "new", 0o644), doMkdir("a", 0o700)},
	},
	{
		name: "relative redirect met while walking an absolute one",
		lowers: []layerSpec{
			{"n": specDir(0o755), whKey("a"): specMarker},
			{"a/o": specDir(0o755), "a/o/r": specFile("r", 0o644), whKey("a/p"): specMarker},
			{"a/p/q": specFile("q", 0o644), "a/o/hidden": specFile("h", 0o644)},
		},
		redirects: []redirectXattr{{0, "n", "/a/o"}, {1, "a/o", "p"}},
		want:      []scenarioStep{expect(doReadDirNames("n"), "ok: q r")},
		then:      []fsOp{doRename("n", "k"), doWrite("k/q", "new", 0o644)},
	},
	{
		name: "redirect on an opaque directory is not read",
		lowers: []layerSpec{
			{"n": specDir(0o755), opqKey("n"): specMarker, "n/x": specFile("x", 0o644)},
			{"o/q": specFile("q", 0o644), "n/r": specFile("r", 0o644)},
		},
		redirects: []redirectXattr{{0, "n", "/o"}},
		want:      []scenarioStep{expect(doReadDirNames("n"), "ok: x")},
		then:      []fsOp{doRename("n", "k")},
	},
	{
		name: "a file at the target ends the directory",
		lowers: []layerSpec{
			{"n": specDir(0o755), "n/x": specFile("x", 0o644)},
			{"f": specFile("f", 0o644)},
			{"f/q": specFile("q", 0o644)},
		},
		redirects: []redirectXattr{{0, "n", "/f"}},
		want:      []scenarioStep{expect(doReadDirNames("n"), "ok: x")},
		then:      []fsOp{doRename("n", "k")},
	},
	{
		name: "nested relative redirect below a redirected directory",
		lowers: []layerSpec{
			{"n": specDir(0o755), "n/s": specDir(0o755), whKey("n/t"): specMarker, whKey("o"): specMarker},
			{"o/t/q": specFile("q", 0o644), "o/s/hidden": specFile("h", 0o644)},
		},
		redirects: []redirectXattr{{0, "n", "/o"}, {0, "n/s", "t"}},
		want:      []scenarioStep{expect(doReadDirNames("n"), "ok: s"), expect(doReadDirNames("n/s"), "ok: q")},
		then:      []fsOp{doRename("n/s", "s"), doRename("n", "k")},
	},
	{
		name: "invalid redirects",
		lowers: []layerSpec{
			{"n": specDir(0o755), "m": specDir(0o755), "r": specDir(0o755)},
			{"o": specDir(0o755)},
		},
		redirects: []redirectXattr{{0, "n", "/o/"}, {0, "m", "//o"}, {0, "r", "a/b"}},
		want:      []scenarioStep{expect(doStat("n"), "EINVAL"), expect(doStat("m"), "EINVAL"), expect(doStat("r"), "EINVAL"), expect(doStat("o"), "ok: dir 0755")},
		unlisted:  true,
	},
	{
		name: "dot and dot-dot in redirects",
		lowers: []layerSpec{
			{"n": specDir(0o755), "m": specDir(0o755), "r": specDir(0o755), "p": specDir(0o755)},
			{"o": specDir(0o755)},
		},
		redirects: []redirectXattr{{0, "n", "/o/../o"}, {0, "m", "/./o"}, {0, "r", ".."}, {0, "p", "."}},
		want:      []scenarioStep{expect(doStat("n"), "EACCES"), expect(doStat("m"), "EACCES"), expect(doStat("r"), "EACCES"), expect(doStat("p"), "EACCES")},
		unlisted:  true,
	},
	{
		name: "a redirect walk that stops before its dot-dot finds nothing",
		lowers: []layerSpec{
			{"n": specDir(0o755), "n/x": specFile("x", 0o644)},
			{"o/q": specFile("q", 0o644), "f": specFile("f", 0o644)},
		},
		redirects: []redirectXattr{{0, "n", "/missing/../o"}},
		want:      []scenarioStep{expect(doReadDirNames("n"), "ok: x")},
		then:      []fsOp{doRename("n", "k")},
	},
	{
		name:      "redirect in the bottom lower is not read",
		lowers:    []layerSpec{{"x": specDir(0o755)}, {"n": specDir(0o755), "o/q": specFile("q", 0o644)}},
		redirects: []redirectXattr{{1, "n", "/o/"}},
		want:      []scenarioStep{expect(doReadDirNames("n"), "ok")},
		then:      []fsOp{doRename("n", "k")},
	},
}

// TestLowerRedirectRules checks, rule by rule, that redirect xattrs in
// lowers are followed as the kernel follows them (redirect_dir=on): the
// kernel's results are pinned, the overlay's trees and results must match
// the kernel's over the very same lower directories, read-only, with an
// OCI upper and with a kernel-format upper, before and after the row's
// operations.
func TestLowerRedirectRules(t *testing.T) {
	kernelOracle(t)
	for _, rc := range redirectCases {
		t.Run(rc.name, func(t *testing.T) {
			s := buildKernelFormatDirs(t, "ovlrr-", rc.lowers)
			for _, r := range rc.redirects {
				setRedirectXattr(t, filepath.Join(s.lowers[r.layer], r.dir), r.target)
			}
			for _, ls := range redirectPairs(t, s, rc.lowers) {
				runRedirectCase(t, ls, rc)
			}
		})
	}
}

// runRedirectCase runs the row rc on the pair ls.
func runRedirectCase(t *testing.T, ls *lockstep, rc redirectCase) {
	t.Helper()
	if p := ls.checkTree(); p != "" && !rc.unlisted {
		t.Fatal(ls.report("before any operation: " + p))
	}
	applyPinned(t, ls, rc.want)
	if o := ls.subject.(*Overlay); o.readOnly() {
		return // os.Rename says EEXIST for an existing directory before the kernel's EROFS; the read-only overlay says EROFS first
	}
	for _, op := range rc.then {
		_, _, p := ls.apply(op)
		if p == "" {
			p = ls.checkTree()
		}
		if p != "" {
			t.Fatal(ls.report(p))
		}
	}
}

// applyPinned applies the steps to ls's kernel and overlay, failing where
// they differ and where the kernel's result is not the one the step pins.
func applyPinned(t *testing.T, ls *lockstep, steps []scenarioStep) {
	t.Helper()
	for _, st := range steps {
		want, _, p := ls.apply(st.op)
		if want.String() != st.want {
			t.Errorf("row out of date: the kernel returned %q for %v, the row pins %q", want, st.op, st.want)
		}
		if p != "" {
			t.Fatal(ls.report(p))
		}
	}
}

// setRedirectXattr sets trusted.overlay.redirect on the host directory p.
func setRedirectXattr(tb harnessTB, p, target string) {
	tb.Helper()
	if err := unix.Lsetxattr(p, "trusted.overlay.redirect", []byte(target), 0); err != nil {
		tb.Fatalf("setxattr %s: %v", p, err)
	}
}

// redirectPairs returns three lockstep pairs over the lower directories of
// s: the kernel (redirect_dir=on), each with an upper of its own, against
// the overlay read-only, with an OCI upper and in FormatKernel. The
// read-only pair's kernel has no upper either.
func redirectPairs(tb harnessTB, s *kernelFormatStack, specs []layerSpec) []*lockstep {
	tb.Helper()
	var ls []afero.Fs
	for _, dir := range s.lowers {
		ls = append(ls, afero.NewBasePathFs(afero.NewOsFs(), dir))
	}
	ro, err := New(nil, ls)
	if err != nil {
		tb.Fatalf("New read-only: %v", err)
	}
	oci, err := New(afero.NewBasePathFs(afero.NewOsFs(), harnessTempDir(tb)), ls)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	kf := s.withUpper(tb, "kf")
	return []*lockstep{
		{oracle: s.mountLowersOnly(tb), subject: ro, oracleName: "kernel (no upper)", subjectName: "overlay (read-only)", lowers: specs},
		{oracle: s.withUpper(tb, "ko").mountOn(tb), subject: oci, oracleName: "kernel", subjectName: "overlay (OCI upper)", lowers: specs},
		{oracle: s.withUpper(tb, "kk").mountOn(tb), subject: kf.open(tb, nil), oracleName: "kernel", subjectName: "overlay (kernel format)", lowers: specs},
	}
}

// withUpper returns a stack over s's lowers with a new empty upper
// directory named name in s's base directory.
func (s *kernelFormatStack) withUpper(tb harnessTB, name string) *kernelFormatStack {
	tb.Helper()
	up := filepath.Join(s.base, name)
	if err := os.Mkdir(up, 0o755); err != nil {
		tb.Fatalf("%v", err)
	}
	return &kernelFormatStack{base: s.base, lowers: s.lowers, upper: up}
}

// mountOn mounts the kernel (redirect_dir=on) on the stack.
func (s *kernelFormatStack) mountOn(tb harnessTB) afero.Fs {
	tb.Helper()
	k, _ := s.mount(tb, ",redirect_dir=on")
	return k
}

// mountLowersOnly mounts the kernel (redirect_dir=on) read-only on the
// stack's lowers alone.
func (s *kernelFormatStack) mountLowersOnly(tb harnessTB) afero.Fs {
	tb.Helper()
	mnt, err := os.MkdirTemp(s.base, "m")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	opts := "lowerdir=" + strings.Join(s.lowers, ":") + ",redirect_dir=on"
	if err := syscall.Mount("overlay", mnt, "overlay", 0, opts); err != nil {
		tb.Fatalf("mount -t overlay overlay -o %s %s: %v", opts, mnt, err)
	}
	tb.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	return newOSDirFs(mnt)
}

// kernelStage mounts the kernel (redirect_dir=on) on s, applies up to max
// random operations through it, renames of merged directories (which
// leave redirect xattrs in the upper) weighted up, and unmounts it. It
// returns the operations, for reports.
func kernelStage(rt *rapid.T, s *kernelFormatStack, label string, max int) []string {
	k, unmount := s.mount(rt, ",redirect_dir=on")
	defer unmount()
	var done []string
	for i, n := 0, rapid.IntRange(0, max).Draw(rt, label+" ops"); i < n; i++ {
		op := drawWeightedOp(rt)
		if dirs := mountedDirs(k); len(dirs) > 0 && rapid.Bool().Draw(rt, label+" rename a directory") {
			op = doRename(rapid.SampledFrom(dirs).Draw(rt, label+" directory"), rapid.SampledFrom(poolPaths).Draw(rt, label+" to"))
		}
		if climbsOut(k, op) {
			continue
		}
		res, err := applyOp(k, op, true)
		if err != nil {
			rt.Fatalf("kernel %v: %v", op, err)
		}
		done = append(done, fmt.Sprintf("%s %v: %v", label, op, res))
	}
	return done
}

// TestKernelRedirectedLowers builds lowers with redirects by the kernel
// itself: random operations (many renames of merged directories) through a
// kernel mount over two random lowers leave redirects in its upper, which
// becomes a lower under a second kernel mount that does the same, whose
// upper becomes a lower in turn. Over the resulting four lowers, the
// overlay (read-only, with an OCI upper, in FormatKernel) must show what
// the kernel shows, and random operations must agree in lockstep; the
// kernel mounted afterwards on the FormatKernel overlay's upper must show
// the overlay's tree.
func TestKernelRedirectedLowers(t *testing.T) {
	kernelOracle(t)
	rapidDefault(t, "rapid.checks", "RAPID_CHECKS", "100")
	rapidDefault(t, "rapid.shrinktime", "RAPID_SHRINKTIME", randomShrinkTime)
	checks, redirected := 0, 0
	rapid.Check(t, func(rt *rapid.T) {
		l2 := drawLayer(rt, "L2", nil, true)
		specs := []layerSpec{drawLayer(rt, "L1", l2, true), l2}
		s := buildKernelFormatDirs(rt, "ovlkr-", specs)
		made := kernelStage(rt, s, "U1", 25)
		s2 := (&kernelFormatStack{base: s.base, lowers: append([]string{s.upper}, s.lowers...)}).withUpper(rt, "u2")
		made = append(made, kernelStage(rt, s2, "U2", 25)...)
		checks++
		if countRedirects(rt, s.upper)+countRedirects(rt, s2.upper) > 0 {
			redirected++
		}
		final := &kernelFormatStack{base: s.base, lowers: append([]string{s2.upper}, s2.lowers...)}
		pairs := redirectPairs(rt, final, specs)
		for _, ls := range pairs {
			if p := errors.Join(errString(ls.checkTree()), checkSameLookups(ls.oracle, ls.subject)); p != nil {
				rt.Fatalf("%s\nthe lowers were made by:\n  %s", ls.report(p.Error()), strings.Join(made, "\n  "))
			}
		}
		// Random operations on a writable pair: a read-only overlay says
		// EROFS for Rename before the name checks os.Rename and the kernel
		// make, a difference of its own.
		ls := pairs[rapid.IntRange(1, len(pairs)-1).Draw(rt, "subject")]
		ls.randomOps(rt, 20)
		if o, ok := ls.subject.(*Overlay); ok && o.cfg.format == FormatKernel {
			kf := &kernelFormatStack{base: final.base, lowers: final.lowers, upper: filepath.Join(final.base, "kf")}
			k, _ := kf.mount(rt, ",redirect_dir=on")
			if err := errors.Join(checkSameTree(k, o), checkSameLookups(k, o)); err != nil {
				rt.Fatalf("the kernel mounted on the overlay's upper shows another tree:\n%v", err)
			}
		}
	})
	requireRedirects(t, checks, redirected)
}

// requireRedirects fails t if too few of its random checks had redirects
// in their lowers for the test to be testing them.
func requireRedirects(t *testing.T, checks, redirected int) {
	t.Helper()
	t.Logf("%d of %d checks had redirects in their lowers", redirected, checks)
	if checks >= 20 && redirected < checks/10 {
		t.Errorf("only %d of %d checks had redirects in their lowers: the generator no longer tests them", redirected, checks)
	}
}

// mountedDirs returns the directories of the operation pool that fsys
// shows (not symlinks to them).
func mountedDirs(fsys afero.Fs) []string {
	var dirs []string
	for _, p := range poolPaths {
		if fi, err := lstatAny(fsys, p); err == nil && fi.IsDir() {
			dirs = append(dirs, p)
		}
	}
	return dirs
}

// countRedirects returns how many directories under the host directory
// dir carry trusted.overlay.redirect.
func countRedirects(tb harnessTB, dir string) int {
	tb.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if _, err := unix.Lgetxattr(p, "trusted.overlay.redirect", nil); err == nil {
				n++
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("walking %s: %v", dir, err)
	}
	return n
}

// errString turns a problem report into an error, nil for none.
func errString(p string) error {
	if p == "" {
		return nil
	}
	return errors.New(p)
}

// TestKernelCommitRedirects commits a FormatKernel upper that random
// operations (renames weighted up) filled with redirects: the committed
// upper is then a lower with redirects. Random operations go on in
// lockstep with the kernel mounted on the committed stack, and the kernel
// mounted at the end on the overlay's new upper must show its tree.
func TestKernelCommitRedirects(t *testing.T) {
	kernelOracle(t)
	rapidDefault(t, "rapid.checks", "RAPID_CHECKS", "100")
	rapidDefault(t, "rapid.shrinktime", "RAPID_SHRINKTIME", randomShrinkTime)
	checks, redirected := 0, 0
	rapid.Check(t, func(rt *rapid.T) {
		l2 := drawLayer(rt, "L2", nil, true)
		specs := []layerSpec{drawLayer(rt, "L1", l2, true), l2}
		oracle, err := kernelMount(rt, specs...)
		if err != nil {
			rt.Fatalf("mounting the kernel oracle: %v", err)
		}
		s := newKernelFormatStack(rt, specs...)
		before := &lockstep{oracle: oracle, subject: s.o, oracleName: "kernel", subjectName: "overlay (kernel format)", lowers: specs}
		before.renameDirs(rt, 5)
		before.randomOps(rt, 25)
		committed := (&kernelFormatStack{base: s.base, lowers: append([]string{s.upper}, s.lowers...)}).withUpper(rt, "c")
		if err := s.o.Commit(afero.NewBasePathFs(afero.NewOsFs(), committed.upper)); err != nil {
			rt.Fatalf("Commit: %v", err)
		}
		checks++
		if countRedirects(rt, s.upper) > 0 {
			redirected++
		}
		after := &lockstep{oracle: committed.withUpper(rt, "ck").mountOn(rt), subject: s.o,
			oracleName: "kernel on the committed stack", subjectName: "overlay (kernel format, committed)", lowers: specs}
		if p := after.checkTree(); p != "" {
			rt.Fatal(after.report("after Commit: " + p))
		}
		after.randomOps(rt, 25)
		k := committed.mountOn(rt)
		if err := errors.Join(checkSameTree(k, s.o), checkSameLookups(k, s.o)); err != nil {
			rt.Fatalf("the kernel mounted on the overlay's new upper shows another tree:\n%v", err)
		}
	})
	requireRedirects(t, checks, redirected)
}

// renameDirs renames up to max directories the oracle shows to names of
// the operation pool, in lockstep: renames of merged directories leave
// redirects in a kernel-format upper.
func (l *lockstep) renameDirs(rt *rapid.T, max int) {
	for i, n := 0, rapid.IntRange(0, max).Draw(rt, "directory renames"); i < n; i++ {
		dirs := mountedDirs(l.oracle)
		if len(dirs) == 0 {
			return
		}
		op := doRename(rapid.SampledFrom(dirs).Draw(rt, "directory"), rapid.SampledFrom(poolPaths).Draw(rt, "to"))
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

// TestKernelExportRedirects checks Changes and ExportLayer of a
// FormatKernel upper holding redirects, over lowers that hold redirects
// too (made by the kernel): the exported layer applied over the flattened
// lowers, and stacked over the lowers as a TarFs, must give the overlay's
// merged view, and Changes must agree with the layer and the trees before
// and after, as for an OCI upper (ltRoundTrip). Random operations run in
// lockstep with the kernel first.
func TestKernelExportRedirects(t *testing.T) {
	kernelOracle(t)
	rapidDefault(t, "rapid.checks", "RAPID_CHECKS", "100")
	rapidDefault(t, "rapid.shrinktime", "RAPID_SHRINKTIME", randomShrinkTime)
	checks, redirected := 0, 0
	rapid.Check(t, func(rt *rapid.T) {
		l2 := drawLayer(rt, "L2", nil, true)
		specs := []layerSpec{drawLayer(rt, "L1", l2, true), l2}
		s := buildKernelFormatDirs(rt, "ovlke-", specs)
		kernelStage(rt, s, "U1", 15)
		stack := (&kernelFormatStack{base: s.base, lowers: append([]string{s.upper}, s.lowers...)}).withUpper(rt, "x")
		o := stack.open(rt, nil)
		ls := &lockstep{oracle: stack.withUpper(rt, "xk").mountOn(rt), subject: o, oracleName: "kernel", subjectName: "overlay (kernel format)", lowers: specs}
		ls.renameDirs(rt, 5)
		ls.randomOps(rt, 20)
		checks++
		if countRedirects(rt, stack.upper) > 0 {
			redirected++
		}
		checkExportedLayer(rt, o, stack.lowers)
	})
	requireRedirects(t, checks, redirected)
}

// checkExportedLayer checks ExportLayer and Changes of o, whose lowers
// are the host directories lowers, as ltRoundTrip does.
func checkExportedLayer(rt *rapid.T, o *Overlay, lowers []string) {
	var ls []afero.Fs
	for _, dir := range lowers {
		ls = append(ls, afero.NewBasePathFs(afero.NewOsFs(), dir))
	}
	ro, err := New(nil, ls)
	ltMust(rt, err)
	disk := func() afero.Fs { return afero.NewBasePathFs(afero.NewOsFs(), harnessTempDir(rt)) }
	applied := disk()
	ltMust(rt, Flatten(applied, ro))
	before, err := ltWalk(applied)
	ltMust(rt, err)
	layer := ltExport(rt, o)
	ltMust(rt, ApplyLayer(applied, bytes.NewReader(layer)))
	want := disk()
	ltMust(rt, Flatten(want, o))
	if err := ltDiff(want, applied, true); err != nil {
		rt.Fatalf("ApplyLayer(lowers, ExportLayer(upper)) differs from the merged view:\n%v\nlayer: %v", err, ltListing(ltHeaders(rt, layer)))
	}
	restacked := disk()
	ltMust(rt, Flatten(restacked, ltRestack(rt, layer, ls)))
	if err := ltDiff(want, restacked, true); err != nil {
		rt.Fatalf("the layer stacked as a TarFs lower differs from the merged view:\n%v", err)
	}
	after, err := ltWalk(want)
	ltMust(rt, err)
	if err := ltCheckChanges(o, ltHeaders(rt, layer), before, after); err != nil {
		ch, _ := o.Changes()
		rt.Fatalf("Changes() disagrees with the layer:\n%v\nchanges: %v\nlayer: %v", err, ch, ltListing(ltHeaders(rt, layer)))
	}
}

// TestLowerRedirectUserXattr checks that WithUserXattr refuses a lower's
// user.overlay.redirect with EPERM (also ErrRedirect), as the kernel's
// userxattr option (redirect_dir=nofollow) does.
func TestLowerRedirectUserXattr(t *testing.T) {
	kernelOracle(t)
	s := buildKernelFormatDirs(t, "ovlru-", []layerSpec{{"new": specDir(0o755)}, {"old/f": specFile("f", 0o644)}})
	if err := unix.Lsetxattr(filepath.Join(s.lowers[0], "new"), "user.overlay.redirect", []byte("/old"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	mnt := t.TempDir()
	if err := syscall.Mount("overlay", mnt, "overlay", 0, "lowerdir="+strings.Join(s.lowers, ":")+",userxattr"); err != nil {
		t.Fatalf("mount: %v", err)
	}
	defer func() { _ = syscall.Unmount(mnt, syscall.MNT_DETACH) }()
	if _, err := os.Stat(filepath.Join(mnt, "new")); !errors.Is(err, syscall.EPERM) {
		t.Errorf("kernel: Stat(new) = %v, want EPERM (the row is out of date)", err)
	}
	var ls []afero.Fs
	for _, dir := range s.lowers {
		ls = append(ls, afero.NewBasePathFs(afero.NewOsFs(), dir))
	}
	o, err := New(nil, ls, WithUserXattr())
	if err != nil {
		t.Fatal(err)
	}
	_, err = o.Stat("new")
	var pe *fs.PathError
	if !errors.Is(err, syscall.EPERM) || !errors.Is(err, ErrRedirect) || !errors.As(err, &pe) || pe.Path != "new" {
		t.Errorf("Stat(new) = %v, want a *fs.PathError for new matching EPERM and ErrRedirect", err)
	}
}

// TestUpperRedirectDots checks redirects with "." and ".." components in a
// kernel-format upper against the kernel mounted on the same directories:
// the lookup that reaches such a component in a lower fails with EACCES,
// and one that stops before it merges nothing.
func TestUpperRedirectDots(t *testing.T) {
	kernelOracle(t)
	tests := []struct {
		target string
		want   []scenarioStep
	}{
		{"/o/../o", []scenarioStep{expect(doStat("n"), "EACCES")}},
		{"/./o", []scenarioStep{expect(doStat("n"), "EACCES")}},
		{"..", []scenarioStep{expect(doStat("n"), "EACCES")}},
		{".", []scenarioStep{expect(doStat("n"), "EACCES")}},
		{"/missing/../o", []scenarioStep{expect(doReadDirNames("n"), "ok: x")}},
		{"/o/q/../o", []scenarioStep{expect(doReadDirNames("n"), "ok: x")}},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			lowers := []layerSpec{{"o/q": specFile("q", 0o644)}}
			s := buildKernelFormatDirs(t, "ovlud-", lowers)
			n := filepath.Join(s.upper, "n")
			if err := os.MkdirAll(filepath.Join(n, "x"), 0o755); err != nil {
				t.Fatal(err)
			}
			setRedirectXattr(t, n, tt.target)
			ls := &lockstep{oracle: s.mountOn(t), subject: s.open(t, nil), oracleName: "kernel", subjectName: "overlay (kernel format)", lowers: lowers}
			applyPinned(t, ls, tt.want)
		})
	}
}
