package overlay

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"testing"

	"github.com/spf13/afero"
	"pgregory.net/rapid"
)

// scenarioStep is one operation of a hand-written scenario. When want is
// set, it pins the kernel's result (in opResult.String form), documenting
// the behaviour the scenario exercises and guarding against a scenario that
// silently stopped testing it.
type scenarioStep struct {
	op   fsOp
	want string
}

// expect is a step whose kernel result must be want; an empty want leaves
// it unpinned.
func expect(o fsOp, want string) scenarioStep { return scenarioStep{op: o, want: want} }

// kernelScenario is a hand-written differential test: two lower layers (L1
// topmost) and the operations applied to both the kernel and the overlay.
type kernelScenario struct {
	name   string
	l1, l2 layerSpec
	steps  []scenarioStep
}

// usesSymlinks reports whether the scenario needs symlinks, which the
// MemMapFs mode cannot hold.
func (s kernelScenario) usesSymlinks() bool {
	for _, st := range s.steps {
		if st.op.Kind == fopSymlink {
			return true
		}
	}
	return s.l1.hasSymlinks() || s.l2.hasSymlinks()
}

// deepLower is a lower-only directory chain with distinct modes.
var deepLower = layerSpec{
	"p":       specDir(0o750),
	"p/q":     specDir(0o711),
	"p/q/r":   specDir(0o700),
	"p/q/r/f": specFile("lower", 0o640),
}

// kernelScenarios are the hand-written scenarios of TestKernelScenarios.
var kernelScenarios = []kernelScenario{
	{
		name: "lookup/file-over-dir-hides-children",
		l1:   layerSpec{"a": specFile("top", 0o644)},
		l2:   layerSpec{"a": specDir(0o755), "a/x": specFile("hidden", 0o644)},
		steps: []scenarioStep{
			expect(doStat("a"), "ok: file 0644 size=3"),
			expect(doStat("a/x"), "ENOTDIR"),
			expect(doRead("a"), "ok: top"),
			expect(doReadDirNames("/"), "ok: a"),
			expect(doWrite("a/x", "new", 0o644), "ENOTDIR"),
		},
	},
	{
		name: "lookup/dir-over-file-is-not-merged",
		l1:   layerSpec{"a": specDir(0o700), "a/y": specFile("y", 0o644)},
		l2:   layerSpec{"a": specFile("lower file", 0o644), "b": specDir(0o755), "b/z": specFile("z", 0o600)},
		steps: []scenarioStep{
			expect(doStat("a"), "ok: dir 0700"),
			expect(doReadDirNames("a"), "ok: y"),
			expect(doStat("b/z"), "ok: file 0600 size=1"),
		},
	},
	{
		name: "lookup/merged-dirs",
		l1:   layerSpec{"d": specDir(0o755), "d/x": specFile("1", 0o644)},
		l2:   layerSpec{"d": specDir(0o700), "d/x": specFile("old", 0o600), "d/y": specFile("2", 0o644), "d/e/f": specFile("deep", 0o644)},
		steps: []scenarioStep{
			expect(doReadDirNames("d"), "ok: e x y"),
			expect(doStat("d"), "ok: dir 0755"),
			expect(doRead("d/x"), "ok: 1"),
			expect(doRead("d/y"), "ok: 2"),
			expect(doRead("d/e/f"), "ok: deep"),
		},
	},
	{
		name: "lookup/opaque-dir-stops-descent",
		l1:   layerSpec{"d": specDir(0o755), opqKey("d"): specMarker, "d/x": specFile("1", 0o644)},
		l2:   layerSpec{"d": specDir(0o755), "d/y": specFile("2", 0o644), "d/e": specDir(0o755)},
		steps: []scenarioStep{
			expect(doReadDirNames("d"), "ok: x"),
			expect(doStat("d/y"), "ENOENT"),
			expect(doStat("d/e"), "ENOENT"),
			expect(doMkdir("d/e", 0o700), "ok"),
			expect(doReadDirNames("d/e"), "ok"),
		},
	},
	{
		name: "lookup/whiteout-hides-lower-name",
		l1:   layerSpec{whKey("y"): specMarker, "d": specDir(0o755), whKey("d/e"): specMarker},
		l2:   layerSpec{"y": specFile("gone", 0o644), "d/e/f": specFile("gone", 0o644), "d/k": specFile("kept", 0o644)},
		steps: []scenarioStep{
			expect(doStat("y"), "ENOENT"),
			expect(doStat("d/e/f"), "ENOENT"),
			expect(doReadDirNames("d"), "ok: k"),
			expect(doReadDirNames("/"), "ok: d"),
			expect(doWrite("y", "back", 0o600), "ok"),
			expect(doRead("y"), "ok: back"),
			expect(doMkdir("d/e", 0o755), "ok"),
			expect(doReadDirNames("d/e"), "ok"),
		},
	},
	{
		name: "copyup/deep-lower-only-dir-keeps-parent-modes-and-mtimes",
		l2:   deepLower,
		steps: []scenarioStep{
			expect(doAppend("p/q/r/f", "+more"), "ok"),
			expect(doRead("p/q/r/f"), "ok: lower+more"),
			expect(doStat("p"), "ok: dir 0750"),
			expect(doStat("p/q"), "ok: dir 0711"),
			expect(doStat("p/q/r"), "ok: dir 0700"),
		},
	},
	{
		name: "copyup/chmod-and-chtimes-of-lower-entries",
		l2:   deepLower,
		steps: []scenarioStep{
			expect(doChmod("p/q/r/f", 0o600|fs.ModeSetuid), "ok"),
			expect(doStat("p/q/r/f"), "ok: file 4600 size=5"),
			expect(doChtimes("p/q"), "ok"),
			expect(doChmod("p", 0o777|fs.ModeSticky), "ok"),
			expect(doStat("p"), "ok: dir 1777"),
		},
	},
	{
		name: "copyup/open-rdonly-trunc-truncates-lower-file",
		l2:   layerSpec{"f": specFile("content", 0o644), "g": specFile("content", 0o644)},
		steps: []scenarioStep{
			expect(doOpen("f", os.O_RDONLY|os.O_TRUNC, ""), "ok"),
			expect(doRead("f"), "ok"),
			expect(doOpen("g", os.O_RDONLY, ""), "ok"),
			expect(doOpen("g", os.O_RDWR, ""), "ok"),
			expect(doRead("g"), "ok: content"),
			expect(doOpen("g", os.O_WRONLY|os.O_TRUNC, "new"), "ok"),
			expect(doRead("g"), "ok: new"),
		},
	},
	{
		name: "copyup/truncate-through-handle",
		l2:   layerSpec{"f": specFile("0123456789", 0o644)},
		steps: []scenarioStep{
			expect(doTruncate("f", 3), "ok"),
			expect(doRead("f"), "ok: 012"),
			expect(doTruncate("f", 5), "ok"),
			expect(doStat("f"), "ok: file 0644 size=5"),
		},
	},
	{
		name: "copyup/read-handle-follows-copy-up",
		l1:   layerSpec{"top": specFile("upper", 0o644)},
		l2:   layerSpec{"f": specFile("hello", 0o644), "d/g": specFile("world", 0o600)},
		steps: []scenarioStep{
			expect(doReadHandleFollows("f"), "ok: h|Zllo"),
			expect(doReadHandleFollows("d/g"), "ok: w|Zrld"),
			expect(doReadHandleFollows("top"), "ok: u|Zper"),
			expect(doReadHandleFollows("d"), "EISDIR"),
		},
	},
	{
		name: "open/flags-and-errors",
		l1:   layerSpec{"f": specFile("lower", 0o644)},
		l2:   layerSpec{"d": specDir(0o755), whKey("w"): specMarker},
		steps: []scenarioStep{
			expect(doOpen("f", os.O_CREATE|os.O_EXCL|os.O_WRONLY, "x"), "EEXIST"),
			expect(doOpen("f", os.O_RDONLY, "x"), "EBADF"),
			expect(doRead("f"), "ok: lower"),
			expect(doOpen("d", os.O_RDWR, ""), "EISDIR"),
			expect(doOpen("d", os.O_RDONLY|os.O_TRUNC, ""), "EISDIR"),
			expect(doOpen("d", os.O_CREATE|os.O_WRONLY, ""), "EISDIR"),
			expect(doRead("d"), "EISDIR"),
			expect(doOpen("missing", os.O_RDONLY, ""), "ENOENT"),
			expect(doOpen("f/x", os.O_CREATE|os.O_WRONLY, ""), "ENOTDIR"),
			expect(doOpen("new", os.O_CREATE|os.O_EXCL|os.O_WRONLY, "n"), "ok"),
			expect(doAppend("new", "+"), "ok"),
			expect(doRead("new"), "ok: n+"),
			expect(doAppend("nope", "+"), "ENOENT"),
		},
	},
	{
		name: "remove/files-in-every-layer",
		l1:   layerSpec{"s": specFile("l1", 0o644), "d": specDir(0o755)},
		l2:   layerSpec{"lo": specFile("l2", 0o644), "s": specFile("shadowed", 0o644), "d/x": specFile("x", 0o644)},
		steps: []scenarioStep{
			expect(doRemove("lo"), "ok"),
			expect(doStat("lo"), "ENOENT"),
			expect(doWrite("s", "upper", 0o600), "ok"),
			expect(doRemove("s"), "ok"),
			expect(doStat("s"), "ENOENT"),
			expect(doWrite("u", "upper only", 0o644), "ok"),
			expect(doRemove("u"), "ok"),
			expect(doRemove("u"), "ENOENT"),
			expect(doRemove("d/x/y"), "ENOTDIR"),
			expect(doRemove("d/x"), "ok"),
			expect(doReadDirNames("d"), "ok"),
		},
	},
	{
		name: "remove/dir-empty-after-removing-children",
		l1:   layerSpec{"d": specDir(0o755), "d/x": specFile("x", 0o644)},
		l2:   layerSpec{"d": specDir(0o755), "d/y": specFile("y", 0o644), "e/z": specFile("z", 0o644)},
		steps: []scenarioStep{
			expect(doRemove("d"), "ENOTEMPTY"),
			expect(doRemove("d/x"), "ok"),
			expect(doRemove("d"), "ENOTEMPTY"),
			expect(doRemove("d/y"), "ok"),
			expect(doReadDirNames("d"), "ok"),
			expect(doRemove("d"), "ok"),
			expect(doStat("d"), "ENOENT"),
			expect(doRemove("e"), "ENOTEMPTY"),
			expect(doRemove("e/z"), "ok"),
			expect(doRemove("e"), "ok"),
			expect(doReadDirNames("/"), "ok"),
		},
	},
	{
		name: "remove/removeall-across-layers",
		l1:   layerSpec{"d": specDir(0o755), "d/x": specFile("x", 0o644), "d/e": specDir(0o700)},
		l2:   layerSpec{"d": specDir(0o755), "d/y": specFile("y", 0o644), "d/e/f": specFile("f", 0o644), "k": specFile("k", 0o644)},
		steps: []scenarioStep{
			expect(doRemoveAll("d"), "ok"),
			expect(doStat("d"), "ENOENT"),
			expect(doRemoveAll("d"), "ok"),
			expect(doRemoveAll("k/x"), "ENOTDIR"),
			expect(doMkdir("d", 0o711), "ok"),
			expect(doReadDirNames("d"), "ok"),
			expect(doStat("d/e/f"), "ENOENT"),
		},
	},
	{
		name: "mkdir/over-removed-lower-dir-is-opaque",
		l2:   layerSpec{"d": specDir(0o755), "d/x": specFile("x", 0o644), "d/e/f": specFile("f", 0o644)},
		steps: []scenarioStep{
			expect(doRemoveAll("d"), "ok"),
			expect(doMkdir("d", 0o700), "ok"),
			expect(doReadDirNames("d"), "ok"),
			expect(doStat("d/x"), "ENOENT"),
			expect(doMkdir("d/e", 0o755), "ok"),
			expect(doReadDirNames("d/e"), "ok"),
			expect(doMkdir("d", 0o700), "EEXIST"),
		},
	},
	{
		name: "mkdir/errors-and-setgid-inheritance",
		l2:   layerSpec{"g": specDir(0o775 | fs.ModeSetgid), "f": specFile("f", 0o644)},
		steps: []scenarioStep{
			expect(doMkdir("f", 0o755), "EEXIST"),
			expect(doMkdir("f/x", 0o755), "ENOTDIR"),
			expect(doMkdir("missing/x", 0o755), "ENOENT"),
			expect(doMkdir("g/sub", 0o700), "ok"),
			expect(doStat("g/sub"), "ok: dir 2700"),
			expect(doMkdir("s", 0o755|fs.ModeSetgid|fs.ModeSticky), "ok"),
			expect(doStat("s"), "ok: dir 1755"),
			expect(doMkdirAll("g/a/b/c", 0o750), "ok"),
			expect(doStat("g/a/b"), "ok: dir 2750"),
			expect(doMkdirAll("f/a", 0o755), "ENOTDIR"),
			expect(doMkdirAll("g", 0o700), "ok"),
			expect(doWrite("g/file", "x", 0o644), "ok"),
			expect(doStat("g/file"), "ok: file 0644 size=1"),
		},
	},
	{
		name: "rename/file-across-layers",
		l1:   layerSpec{"a": specDir(0o755)},
		l2:   layerSpec{"f": specFile("lower", 0o600), "a/old": specFile("old", 0o644)},
		steps: []scenarioStep{
			expect(doRename("f", "a/g"), "ok"),
			expect(doStat("f"), "ENOENT"),
			expect(doRead("a/g"), "ok: lower"),
			expect(doRename("a/old", "top"), "ok"),
			expect(doReadDirNames("a"), "ok: g"),
			expect(doReadDirNames("/"), "ok: a top"),
		},
	},
	{
		name: "rename/lower-dir",
		l2:   layerSpec{"d": specDir(0o750), "d/e": specDir(0o711), "d/e/f": specFile("f", 0o644)},
		steps: []scenarioStep{
			expect(doRename("d", "n"), "ok"),
			expect(doStat("d"), "ENOENT"),
			expect(doReadDirNames("n"), "ok: e"),
			expect(doRead("n/e/f"), "ok: f"),
			expect(doMkdir("d", 0o755), "ok"),
			expect(doReadDirNames("d"), "ok"),
			expect(doRename("n/e", "d/e2"), "ok"),
			expect(doRead("d/e2/f"), "ok: f"),
		},
	},
	{
		name: "rename/merged-dir",
		l1:   layerSpec{"d": specDir(0o755), "d/x": specFile("x", 0o644), whKey("d/w"): specMarker},
		l2:   layerSpec{"d": specDir(0o700), "d/y": specFile("y", 0o644), "d/w": specFile("w", 0o644), "d/e/f": specFile("f", 0o644)},
		steps: []scenarioStep{
			expect(doWrite("d/u", "u", 0o644), "ok"),
			expect(doRename("d", "m"), "ok"),
			expect(doReadDirNames("m"), "ok: e u x y"),
			expect(doStat("d"), "ENOENT"),
			expect(doRead("m/e/f"), "ok: f"),
			expect(doMkdir("d", 0o755), "ok"),
			expect(doReadDirNames("d"), "ok"),
			expect(doRename("m", "d/m"), "ok"),
			expect(doReadDirNames("d/m"), "ok: e u x y"),
		},
	},
	{
		name: "rename/file-over-existing-file",
		l1:   layerSpec{"a": specFile("A", 0o600)},
		l2:   layerSpec{"b": specFile("B", 0o644), "c": specFile("C", 0o644)},
		steps: []scenarioStep{
			expect(doRename("a", "b"), "ok"),
			expect(doRead("b"), "ok: A"),
			expect(doStat("a"), "ENOENT"),
			expect(doRename("c", "c"), "ok"),
			expect(doRead("c"), "ok: C"),
			expect(doRename("b", "c"), "ok"),
			expect(doReadDirNames("/"), "ok: c"),
		},
	},
	{
		name: "rename/errors",
		l1:   layerSpec{"f": specFile("f", 0o644), "e": specDir(0o755)},
		l2:   layerSpec{"d": specDir(0o755), "d/e": specDir(0o755), "d/e/g": specFile("g", 0o644)},
		steps: []scenarioStep{
			expect(doRename("f", "d"), "EEXIST"),
			expect(doRename("d", "e"), "EEXIST"),
			expect(doRename("d", "d"), "EEXIST"),
			expect(doRename("d", "d/e/x"), "EINVAL"),
			expect(doRename("missing", "x"), "ENOENT"),
			expect(doRename("missing", "d"), "ENOENT"),
			expect(doRename("d", "f"), "ENOTDIR"),
			expect(doRename("f", "missing/x"), "ENOENT"),
			expect(doRename("f", "f/x"), "ENOTDIR"),
			expect(doReadDirNames("/"), "ok: d e f"),
		},
	},
	{
		name: "chmod-chtimes/errors",
		l2:   layerSpec{"f": specFile("f", 0o644)},
		steps: []scenarioStep{
			expect(doChmod("missing", 0o644), "ENOENT"),
			expect(doChmod("f/x", 0o644), "ENOTDIR"),
			expect(doChtimes("missing"), "ENOENT"),
			expect(doChtimes("f"), "ok"),
			expect(doChmod("f", 0o000), "ok"),
			expect(doRead("f"), "ok: f"),
		},
	},
	{
		name: "symlink/lower-links",
		l2: layerSpec{
			"l":     specLink("d/e"),
			"d/e/f": specFile("f", 0o644),
			"d/up":  specLink("../l"),
			"loop":  specLink("loop"),
			"dang":  specLink("missing"),
		},
		steps: []scenarioStep{
			expect(doReadlink("l"), "ok: d/e"),
			expect(doStat("l"), "ok: dir 0755"),
			expect(doLstat("l"), "ok: symlink 0777"),
			expect(doRead("l/f"), "ok: f"),
			expect(doRead("d/up/f"), "ok: f"),
			expect(doReadDirNames("l"), "ok: f"),
			expect(doStat("loop"), "ELOOP"),
			expect(doStat("dang"), "ENOENT"),
			expect(doReadlink("d"), "EINVAL"),
			expect(doReadlink("missing"), "ENOENT"),
			expect(doWrite("l/new", "n", 0o644), "ok"),
			expect(doReadDirNames("d/e"), "ok: f new"),
			expect(doWrite("dang", "created", 0o600), "ok"),
			expect(doRead("missing"), "ok: created"),
			expect(doChmod("l", 0o700), "ok"),
			expect(doStat("d/e"), "ok: dir 0700"),
			expect(doRemove("l"), "ok"),
			expect(doStat("d/e/f"), "ok: file 0644 size=1"),
			expect(doRename("d/up", "up2"), "ok"),
			expect(doReadlink("up2"), "ok: ../l"),
		},
	},
	{
		name: "symlink/create",
		l1:   layerSpec{"a": specFile("a", 0o644)},
		l2:   layerSpec{"d": specDir(0o755), "x": specFile("x", 0o644)},
		steps: []scenarioStep{
			expect(doSymlink("a", "s"), "ok"),
			expect(doReadlink("s"), "ok: a"),
			expect(doRead("s"), "ok: a"),
			expect(doSymlink("b", "s"), "EEXIST"),
			expect(doSymlink("b", "x"), "EEXIST"),
			expect(doSymlink("../x", "d/s"), "ok"),
			expect(doRead("d/s"), "ok: x"),
			expect(doSymlink("s", "a/s"), "ENOTDIR"),
			expect(doRemove("x"), "ok"),
			expect(doSymlink("d", "x"), "ok"),
			expect(doReadDirNames("x"), "ok: s"),
			expect(doRemoveAll("x"), "ok"),
			expect(doStat("d/s"), "ENOENT"),
			expect(doLstat("d/s"), "ok: symlink 0777"),
		},
	},
}

// TestKernelScenarios runs every hand-written scenario against the kernel
// and against the overlay over disk layers and over MemMapFs layers,
// comparing each operation's result and the merged trees after each one.
func TestKernelScenarios(t *testing.T) {
	kernelOracle(t) // Fail or skip once, up front, without a kernel.
	for _, sc := range kernelScenarios {
		for _, mode := range []subjectMode{diskLayers, memLayers} {
			t.Run(sc.name+"/"+string(mode), func(t *testing.T) {
				if mode == memLayers && sc.usesSymlinks() {
					t.Skip("MemMapFs layers hold no symlinks")
				}
				runScenario(t, sc, kernelVsOverlay(mode))
			})
		}
	}
}

// runScenario runs one scenario on the pair that build makes: the
// kernel's result must match each pinned result, and both sides must agree
// on every result and on the tree before and after every operation.
func runScenario(t *testing.T, sc kernelScenario, build pairFunc) {
	ls := build(t, sc.l1, sc.l2)
	if p := ls.checkTree(); p != "" {
		t.Fatal(ls.report("before any operation: " + p))
	}
	for _, st := range sc.steps {
		want, _, problem := ls.apply(st.op)
		if st.want != "" && want.String() != st.want {
			t.Errorf("scenario out of date: the kernel returned %q for %v, the scenario pins %q", want, st.op, st.want)
		}
		if problem == "" {
			problem = ls.checkTree()
		}
		if problem != "" {
			t.Fatal(ls.report(problem))
		}
	}
}

// Defaults of TestKernelRandom, overridable with rapid's own flags
// (-rapid.checks, -rapid.steps, -rapid.shrinktime) or environment
// variables (RAPID_CHECKS, ...).
const (
	randomChecks     = "200"
	randomShrinkTime = "10s"
)

// TestKernelRandom is a rapid state machine test: random lower layers (two,
// small, with whiteouts and opaque directories in L1) and random operation
// sequences are applied to a fresh kernel overlay and to the overlay under
// test; each operation's result and the merged tree after each operation
// must agree. A failure shrinks to a minimal reproducer.
func TestKernelRandom(t *testing.T) {
	checkPerMode(t, func(rt *rapid.T, mode subjectMode) {
		runRandom(rt, mode == diskLayers, kernelVsOverlay(mode))
	})
}

// checkPerMode runs check with rapid against the kernel, with the random
// tests' defaults, once over disk layers (which hold symlinks) and once
// over MemMapFs layers.
func checkPerMode(t *testing.T, check func(rt *rapid.T, mode subjectMode)) {
	checkModes(t, []subjectMode{diskLayers, memLayers}, check)
}

// checkModes is checkPerMode over the given modes.
func checkModes(t *testing.T, modes []subjectMode, check func(rt *rapid.T, mode subjectMode)) {
	kernelOracle(t)
	rapidDefault(t, "rapid.checks", "RAPID_CHECKS", randomChecks)
	rapidDefault(t, "rapid.shrinktime", "RAPID_SHRINKTIME", randomShrinkTime)
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			rapid.Check(t, func(rt *rapid.T) { check(rt, mode) })
		})
	}
}

// rapidDefault sets rapid's flag name to value for the duration of t,
// unless the flag was given on the command line or through env.
func rapidDefault(t *testing.T, name, env, value string) {
	t.Helper()
	if _, ok := os.LookupEnv(env); ok {
		return
	}
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	f := flag.Lookup(name)
	if given || f == nil {
		return
	}
	old := f.Value.String()
	if err := f.Value.Set(value); err != nil {
		t.Fatalf("setting %s: %v", name, err)
	}
	t.Cleanup(func() { _ = f.Value.Set(old) })
}

// randomLayerPaths are the candidate entries of random layers, parents
// before children. They are the operation paths, so operations collide with
// layer content often.
var randomLayerPaths = poolPaths

// drawLayer draws a random layer spec. The top layer (below is the layer
// under it) also gets opaque directories and whiteouts, the latter only in
// directories that the kernel merges with below: the kernel lists a
// whiteout found in an unmerged directory (one from a single layer, or an
// opaque one) in readdir while lookup says ENOENT, a quirk the library is
// not meant to copy. Symlinks appear only where the mode can hold them.
func drawLayer(rt *rapid.T, label string, below layerSpec, symlinks bool) layerSpec {
	top := below != nil
	spec := layerSpec{}
	isDir := map[string]bool{".": true}
	merged := map[string]bool{".": true}
	for _, p := range randomLayerPaths {
		parent := path.Dir(p)
		if !isDir[parent] {
			continue
		}
		kinds := []string{"absent", "absent", "file", "dir"}
		if symlinks {
			kinds = append(kinds, "symlink")
		}
		if top && merged[parent] {
			kinds = append(kinds, "whiteout")
		}
		what := label + " " + p
		switch rapid.SampledFrom(kinds).Draw(rt, what) {
		case "file":
			spec[p] = specFile(rapid.SampledFrom(poolContents).Draw(rt, what+" content"),
				rapid.SampledFrom([]fs.FileMode{0o644, 0o600, 0o755, 0o755 | fs.ModeSetuid}).Draw(rt, what+" mode"))
		case "dir":
			spec[p] = specDir(rapid.SampledFrom([]fs.FileMode{0o755, 0o750, 0o711, 0o700, 0o777 | fs.ModeSticky, 0o775 | fs.ModeSetgid}).Draw(rt, what+" mode"))
			isDir[p] = true
			opaque := top && rapid.IntRange(0, 3).Draw(rt, what+" opaque") == 3
			if opaque {
				spec[opqKey(p)] = specMarker
			}
			merged[p] = top && !opaque && merged[parent] && below[p].Kind == specKindDir && specHas(below, p)
		case "symlink":
			target := rapid.SampledFrom(poolTargets).Draw(rt, what+" target")
			if strings.HasPrefix(target, "..") && !strings.Contains(p, "/") {
				target = poolTargets[0]
			}
			spec[p] = specLink(target)
		case "whiteout":
			spec[whKey(p)] = specMarker
		}
	}
	return spec
}

// specHas reports whether spec declares p itself.
func specHas(spec layerSpec, p string) bool {
	_, ok := spec[p]
	return ok
}

// drawOp draws one operation of kind k from the shared pools, through the
// fuzz decoder so both drivers speak the same vocabulary.
func drawOp(rt *rapid.T, k fsOpKind) fsOp {
	b := []byte{byte(k),
		byte(rapid.IntRange(0, len(poolPaths)-1).Draw(rt, "path")),
		byte(rapid.IntRange(0, 255).Draw(rt, "operand a")),
		byte(rapid.IntRange(0, 255).Draw(rt, "operand b")),
	}
	return decodeFsOp(b)
}

// pairFunc builds the lockstep pair (oracle and subject) over lowers
// (topmost first) for one random check.
type pairFunc func(tb harnessTB, lowers ...layerSpec) *lockstep

// kernelVsOverlay returns a pairFunc comparing the kernel with the overlay
// under test built in the given layer mode.
func kernelVsOverlay(mode subjectMode) pairFunc {
	return func(tb harnessTB, lowers ...layerSpec) *lockstep {
		k, err := mountKernelStack(tb, false, lowers...)
		if err != nil {
			tb.Fatalf("mounting the kernel oracle: %v", err)
		}
		return &lockstep{oracle: k.fs, subject: buildSubject(tb, mode, lowers...), oracleName: "kernel", lowers: lowers,
			resetOracle: k.reset, commitOracle: k.commit}
	}
}

// TestKernelRandomOtherLayers is TestKernelRandom over other kinds of
// layers: lowers that are OCI layer tars opened with NewTarFs, symlinks
// included; and an upper that is a directory of a MemMapFs.
func TestKernelRandomOtherLayers(t *testing.T) {
	checkModes(t, []subjectMode{tarLayers, memSubdirLayers}, func(rt *rapid.T, mode subjectMode) {
		runRandom(rt, mode == tarLayers, kernelVsOverlay(mode))
	})
}

// TestKernelRandomThreeLowers is TestKernelRandom over three lowers, so that
// whiteouts and opaque directories in a middle layer hide what the bottom
// one holds.
func TestKernelRandomThreeLowers(t *testing.T) {
	checkPerMode(t, func(rt *rapid.T, mode subjectMode) {
		symlinks := mode == diskLayers
		runRandomOver(rt, symlinks, drawLowers(rt, 3, symlinks), kernelVsOverlay(mode))
	})
}

// TestKernelReadOnlyRandom runs the random state machine against a kernel
// overlay mounted without an upper directory, which is read-only, and an
// Overlay without an upper: every result, errno included, and the tree
// must agree.
func TestKernelReadOnlyRandom(t *testing.T) {
	checkModes(t, []subjectMode{memLayers, diskLayers}, func(rt *rapid.T, mode subjectMode) {
		runRandom(rt, mode == diskLayers, readOnlyKernelVsOverlay(mode))
	})
}

// readOnlyKernelVsOverlay returns a pairFunc comparing a read-only kernel
// mount with a read-only Overlay over the same lowers, built in mode.
func readOnlyKernelVsOverlay(mode subjectMode) pairFunc {
	return func(tb harnessTB, lowers ...layerSpec) *lockstep {
		k, err := kernelMountAs(tb, true, lowers...)
		if err != nil {
			tb.Fatalf("mounting the read-only kernel oracle: %v", err)
		}
		var ls []afero.Fs
		for _, spec := range lowers {
			if mode == diskLayers {
				ls = append(ls, ociDiskLower(tb, spec))
			} else {
				ls = append(ls, ociMemLower(tb, spec))
			}
		}
		o, err := New(nil, ls)
		if err != nil {
			tb.Fatalf("New without an upper: %v", err)
		}
		return &lockstep{oracle: k, subject: o, oracleName: "kernel (read-only)", lowers: lowers}
	}
}

// runRandom is one check of the random state machine: draw two lower
// layers, build the pair, then apply random operations in lockstep,
// comparing results after each operation and trees before the first and
// after each one. Symlinks appear in layers and operations only when
// symlinks is set.
func runRandom(rt *rapid.T, symlinks bool, pair pairFunc) {
	runRandomOver(rt, symlinks, drawLowers(rt, 2, symlinks), pair)
}

// drawLowers draws n lower layers, topmost first. Each but the bottom one
// also gets whiteouts and opaque directories over the layer under it.
func drawLowers(rt *rapid.T, n int, symlinks bool) []layerSpec {
	lowers := make([]layerSpec, n)
	var below layerSpec
	for i := n - 1; i >= 0; i-- {
		lowers[i] = drawLayer(rt, fmt.Sprintf("L%d", i+1), below, symlinks)
		below = lowers[i]
	}
	return lowers
}

// runRandomOver is runRandom over the given lowers.
func runRandomOver(rt *rapid.T, symlinks bool, lowers []layerSpec, pair pairFunc) {
	ls := pair(rt, lowers...)
	actions := map[string]func(*rapid.T){
		"": func(rt *rapid.T) {
			if p := ls.checkTree(); p != "" {
				rt.Fatal(ls.report(p))
			}
		},
	}
	for k := fsOpKind(0); k < fopCount; k++ {
		if k == fopSymlink && !symlinks {
			continue
		}
		actions[k.String()] = func(rt *rapid.T) {
			op := drawOp(rt, k)
			if climbsOut(ls.oracle, op) {
				rt.Skip("the op would move a climbing symlink to the top level")
			}
			if _, _, p := ls.apply(op); p != "" {
				rt.Fatal(ls.report(p))
			}
		}
	}
	if o, ok := ls.subject.(*Overlay); ok && !o.readOnly() && !o.layers[0].noOCI {
		actions["Commit"] = ls.commit
		if ls.resetOracle != nil {
			actions["Reset"] = ls.reset
		}
	}
	rt.Repeat(actions)
}

// reset resets the overlay under test and empties the oracle's upper, as
// Reset's kernel analogue, and checks that the merged views agree. Changes
// the overlay committed are in a lower, which Reset leaves alone, so after
// a Commit that the oracle did not make there is nothing to compare with.
func (l *lockstep) reset(rt *rapid.T) {
	if l.committed {
		rt.Skip("the oracle has no committed layer to keep")
	}
	if err := l.resetOracle(); err != nil {
		rt.Fatalf("harness: resetting the %s: %v", l.oracleName, err)
	}
	err := l.subject.(*Overlay).Reset()
	l.lines = append(l.lines, fmt.Sprintf("#%d Reset: %s emptied its upper, %s %v", len(l.lines)+1, l.oracleName, l.subjectLabel(), err))
	if err != nil {
		rt.Fatal(l.report(fmt.Sprintf("Reset: %v", err)))
	}
	if p := l.checkTree(); p != "" {
		rt.Fatal(l.report("after Reset: " + p))
	}
}

// commit commits the overlay under test to a fresh upper of its upper's
// kind, a directory on the host or a MemMapFs, and checks that the merged
// view did not change. A kernel oracle with no open handles is mounted
// again with its upper as the topmost lower, Commit's kernel analogue; one
// with open handles, which keep the mount busy, does nothing. The
// operations after it must still agree with the oracle: the committed layer
// is now a lower whose whiteouts, opaque directories and redirects act on
// what lies below, and a handle must follow its file.
func (l *lockstep) commit(rt *rapid.T) {
	o := l.subject.(*Overlay)
	var fresh afero.Fs = afero.NewMemMapFs()
	if o.layers[0].host {
		fresh = afero.NewBasePathFs(afero.NewOsFs(), harnessTempDir(rt))
	}
	did := "-"
	if l.commitOracle != nil {
		if err := l.commitOracle(); err != nil {
			rt.Fatalf("harness: committing the %s: %v", l.oracleName, err)
		}
		did = "remounted with its upper as a lower"
	} else {
		l.committed = true
	}
	err := o.Commit(fresh)
	l.lines = append(l.lines, fmt.Sprintf("#%d Commit: %s %s, %s %v", len(l.lines)+1, l.oracleName, did, l.subjectLabel(), err))
	if err != nil {
		rt.Fatal(l.report(fmt.Sprintf("Commit: %v", err)))
	}
	if p := l.checkTree(); p != "" {
		rt.Fatal(l.report("after Commit: " + p))
	}
}

// climbsOut reports whether op renames a symlink whose target starts with
// ".." to the top level, where the target would climb out of the tree. The
// overlay deliberately resolves that inside its root (chroot semantics)
// while the kernel resolves it above the mount point, so such a state is
// not comparable.
func climbsOut(oracle afero.Fs, op fsOp) bool {
	if op.Kind != fopRename || strings.Contains(strings.Trim(op.Path2, "/"), "/") {
		return false
	}
	lr, ok := oracle.(afero.LinkReader)
	if !ok {
		return false
	}
	target, err := lr.ReadlinkIfPossible(op.Path)
	return err == nil && strings.HasPrefix(target, "..")
}
