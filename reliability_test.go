package overlay

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay/overlaytest"
)

// The reliability tests check the rule of the issue "Reliability": whatever
// call of the upper fails, an operation leaves the merged view either as it
// was before or as it is after the operation, never in between; the
// overlay keeps working; and a new overlay over the same layers shows the
// same valid state with an empty work directory.

// relBigFile is the content of the lower file d/f: large enough that a
// copy-up writes it in several calls.
var relBigFile = strings.Repeat("0123456789abcdef", 70000/16)

// relLowers returns the two read-only lowers of the MemMapFs cases.
// Directory d merges across both.
func relLowers() []afero.Fs {
	file := func(data string, mode fs.FileMode) *fstest.MapFile {
		return &fstest.MapFile{Data: []byte(data), Mode: mode}
	}
	dir := func(mode fs.FileMode) *fstest.MapFile { return &fstest.MapFile{Mode: fs.ModeDir | mode} }
	top := fstest.MapFS{
		"d":     dir(0o755),
		"d/f":   file(relBigFile, 0o644),
		"d/g":   file("g", 0o640),
		"e":     dir(0o751),
		"e/x":   file("x-lower", 0o644),
		"top":   file("top", 0o600),
		"d/sub": dir(0o700),
	}
	bottom := fstest.MapFS{
		"d":       dir(0o755),
		"d/sub":   dir(0o755),
		"d/sub/h": file("h", 0o644),
		"d/b2":    file("bottom", 0o644),
		"e":       dir(0o755),
		"e/y":     file("y", 0o644),
	}
	return []afero.Fs{afero.FromIOFS{FS: top}, afero.FromIOFS{FS: bottom}}
}

// relEnv is one fresh set of layers for a reliability run.
type relEnv struct {
	raw    afero.Fs             // the upper as it is, for reopening
	faults *overlaytest.FaultFs // the upper as the overlay under test sees it
	lowers []afero.Fs           // read-only
}

// relMemEnv returns a MemMapFs upper over relLowers.
func relMemEnv(*testing.T) relEnv {
	raw := afero.NewMemMapFs()
	return relEnv{raw: raw, faults: overlaytest.NewFaultFs(raw), lowers: relLowers()}
}

// relDiskEnv returns a disk upper over a read-only disk lower that holds
// the file d/f, the symlinks d/lnk -> f and d/abs -> /e/x, and e/x.
func relDiskEnv(t *testing.T) relEnv {
	t.Helper()
	root := t.TempDir()
	lower, upper := filepath.Join(root, "lower"), filepath.Join(root, "upper")
	for _, d := range []string{upper, filepath.Join(lower, "d"), filepath.Join(lower, "e")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range map[string]string{"d/f": "f-lower", "e/x": "x-lower"} {
		if err := os.WriteFile(filepath.Join(lower, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, target := range map[string]string{"d/lnk": "f", "d/abs": "/e/x"} {
		if err := os.Symlink(target, filepath.Join(lower, name)); err != nil {
			t.Fatal(err)
		}
	}
	raw := afero.NewBasePathFs(afero.NewOsFs(), upper)
	return relEnv{
		raw:    raw,
		faults: overlaytest.NewFaultFs(raw),
		lowers: []afero.Fs{afero.NewReadOnlyFs(afero.NewBasePathFs(afero.NewOsFs(), lower))},
	}
}

// relCase is one operation that changes the upper.
type relCase struct {
	name  string
	env   func(*testing.T) relEnv
	setup func(o *Overlay) error // brings the upper to the state before the operation
	op    func(o *Overlay) error
}

// relWrite writes data to name through o.
func relWrite(name, data string) func(o *Overlay) error {
	return func(o *Overlay) error { return afero.WriteFile(o, name, []byte(data), 0o644) }
}

// relMergedSetup makes d a merged directory with an upper-only file, a
// copied-up file and a whiteout inside.
func relMergedSetup(o *Overlay) error {
	if err := relWrite("d/new", "new")(o); err != nil {
		return err
	}
	if err := relWrite("d/g", "g-upper")(o); err != nil {
		return err
	}
	return o.Remove("d/sub/h")
}

// relCases are the operations the reliability tests break.
var relCases = []relCase{
	{name: "copy-up O_RDWR", op: func(o *Overlay) error {
		f, err := o.OpenFile("d/f", os.O_RDWR, 0)
		if err != nil {
			return err
		}
		_, err = f.Write([]byte("!")) // one byte: the caller's own write cannot be torn
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}},
	{name: "copy-up Chmod", op: func(o *Overlay) error { return o.Chmod("d/f", 0o600) }},
	{name: "copy-up with parents", op: func(o *Overlay) error { return o.Chmod("d/sub/h", 0o600) }},
	{name: "copy-up symlink", env: relDiskEnv, op: func(o *Overlay) error { return o.Rename("d/lnk", "e/lnk2") }},
	{name: "copy-up absolute symlink", env: relDiskEnv, op: func(o *Overlay) error { return o.Rename("d/abs", "abs") }},
	{name: "copy-up dir Chmod", op: func(o *Overlay) error { return o.Chmod("d", 0o700) }},
	{name: "rename lower file", op: func(o *Overlay) error { return o.Rename("d/f", "e/f2") }},
	{name: "rename upper file", setup: relWrite("d/new", "new"), op: func(o *Overlay) error { return o.Rename("d/new", "e/new2") }},
	{name: "rename copied-up file over lower file", setup: relWrite("d/g", "g-upper"), op: func(o *Overlay) error { return o.Rename("d/g", "e/x") }},
	{name: "rename lower dir", op: func(o *Overlay) error { return o.Rename("e", "r") }},
	{name: "rename merged dir", setup: relMergedSetup, op: func(o *Overlay) error { return o.Rename("d", "r") }},
	{name: "rename lower file over upper file", setup: relWrite("e/x", "x-upper"), op: func(o *Overlay) error { return o.Rename("d/g", "e/x") }},
	{name: "create file in lower dir", op: func(o *Overlay) error {
		f, err := o.OpenFile("d/sub/new", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
		if err != nil {
			return err
		}
		return f.Close()
	}},
	{name: "remove lower file", op: func(o *Overlay) error { return o.Remove("d/g") }},
	{name: "remove copied-up file", setup: relWrite("d/g", "g-upper"), op: func(o *Overlay) error { return o.Remove("d/g") }},
	{name: "remove emptied merged dir", setup: func(o *Overlay) error { return o.Remove("d/sub/h") }, op: func(o *Overlay) error { return o.Remove("d/sub") }},
	{name: "removeall lower dir", op: func(o *Overlay) error { return o.RemoveAll("e") }},
	{name: "mkdir over whiteout", setup: func(o *Overlay) error { return o.RemoveAll("d") }, op: func(o *Overlay) error { return o.Mkdir("d", 0o750) }},
	{name: "removeall merged dir", setup: relMergedSetup, op: func(o *Overlay) error { return o.RemoveAll("d") }},
}

// relFault is one way to break the upper; k is filled in per run.
type relFault struct {
	name  string
	fault overlaytest.Fault
}

// relFaults returns every fault kind: each kind of call failing once, each
// failing from the k-th call on, and a short write.
func relFaults() []relFault {
	var faults []relFault
	for _, op := range overlaytest.Ops() {
		faults = append(faults,
			relFault{op.String(), overlaytest.Fault{Op: op}},
			relFault{op.String() + "+persist", overlaytest.Fault{Op: op, Persist: true}})
	}
	return append(faults, relFault{"write+short", overlaytest.Fault{Op: overlaytest.OpWrite, Short: true}})
}

// relKnownBugs lists the subtests ("case/fault") that fail because of a
// known library bug. They are skipped unless OVERLAY_KNOWN_BUGS=1.
var relKnownBugs = map[string]string{}

func TestReliabilityUnderFaults(t *testing.T) {
	for _, c := range relCases {
		t.Run(c.name, func(t *testing.T) {
			before, after := relReference(t, c)
			for _, f := range relFaults() {
				t.Run(f.name, func(t *testing.T) {
					if bug := relKnownBugs[c.name+"/"+f.name]; bug != "" && os.Getenv("OVERLAY_KNOWN_BUGS") == "" {
						t.Skip("known bug: " + bug)
					}
					relEveryK(t, c, f.fault, before, after)
				})
			}
		})
	}
}

// relReference runs c without faults and returns the merged trees before
// and after the operation.
func relReference(t *testing.T, c relCase) (before, after overlaytest.Tree) {
	t.Helper()
	env := c.newEnv(t)
	o := env.overlay(t)
	c.runSetup(t, o)
	before = relTree(t, o)
	if err := c.op(o); err != nil {
		t.Fatalf("%s without faults: %v", c.name, err)
	}
	after = relTree(t, o)
	if overlaytest.Diff(before, after) == "" {
		t.Fatalf("%s changes nothing in the merged view", c.name)
	}
	return before, after
}

// newEnv returns fresh layers for c.
func (c relCase) newEnv(t *testing.T) relEnv {
	if c.env == nil {
		return relMemEnv(t)
	}
	return c.env(t)
}

// runSetup brings o to the state before c's operation.
func (c relCase) runSetup(t *testing.T, o *Overlay) {
	t.Helper()
	if c.setup == nil {
		return
	}
	if err := c.setup(o); err != nil {
		t.Fatalf("setup: %v", err)
	}
}

// overlay returns an overlay over env's faulty upper.
func (env relEnv) overlay(t *testing.T) *Overlay {
	t.Helper()
	o, err := New(env.faults.Fs(), env.lowers)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return o
}

// relEveryK breaks the k-th call of the fault's kind for k = 1, 2, … until
// the operation runs without reaching it.
func relEveryK(t *testing.T, c relCase, fault overlaytest.Fault, before, after overlaytest.Tree) {
	for k := 1; ; k++ {
		if k > 1000 {
			t.Fatalf("the fault still fires at k = %d", k)
		}
		fault.N = k
		if !relOnce(t, c, fault, before, after) {
			return
		}
		if t.Failed() {
			t.Logf("first failure at k = %d", k)
			return
		}
	}
}

// relOnce runs c with fault armed and checks the rule. It reports whether
// the fault fired.
func relOnce(t *testing.T, c relCase, fault overlaytest.Fault, before, after overlaytest.Tree) bool {
	t.Helper()
	env := c.newEnv(t)
	o := env.overlay(t)
	c.runSetup(t, o)
	env.faults.Arm(fault)
	err := c.op(o)
	env.faults.Disarm()
	fired := env.faults.Fired() > 0
	at := fmt.Sprintf("k=%d", fault.N)
	if !fired {
		if err != nil {
			t.Errorf("%s: the operation failed with no fault: %v", at, err)
		}
		return false
	}
	relCheckErr(t, at, err, fault)
	got := relTree(t, o)
	state := relWhich(got, before, after)
	switch {
	case state == "":
		t.Errorf("%s: op returned %v; the merged view is neither the old nor the new state:\nvs old:\n%svs new:\n%s",
			at, err, overlaytest.Diff(before, got), overlaytest.Diff(after, got))
		return true
	case err == nil && state != "new":
		t.Errorf("%s: op succeeded but the merged view is the old state", at)
	}
	relCheckReopen(t, at, env, got)
	relCheckWorking(t, at, c, o, state, after)
	return true
}

// relCheckErr checks that a failed operation reports the injected error in
// the overlay's error types.
func relCheckErr(t *testing.T, at string, err error, fault overlaytest.Fault) {
	t.Helper()
	if err == nil {
		return
	}
	var pe *fs.PathError
	var le *os.LinkError
	if !errors.As(err, &pe) && !errors.As(err, &le) {
		t.Errorf("%s: op returned %T %v, want *fs.PathError or *os.LinkError", at, err, err)
	}
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("%s: op returned %v, want the injected EIO", at, err)
	}
}

// relWhich returns "old" or "new" if got is the state before or after the
// operation, and "" if it is neither.
func relWhich(got, before, after overlaytest.Tree) string {
	switch {
	case overlaytest.Diff(before, got) == "":
		return "old"
	case overlaytest.Diff(after, got) == "":
		return "new"
	}
	return ""
}

// relCheckReopen checks that a new overlay over the same layers shows the
// same state, and that New empties the work directory.
func relCheckReopen(t *testing.T, at string, env relEnv, want overlaytest.Tree) {
	t.Helper()
	o2, err := New(env.raw, env.lowers)
	if err != nil {
		t.Errorf("%s: New over the upper the fault left: %v", at, err)
		return
	}
	if d := overlaytest.Diff(want, relTree(t, o2)); d != "" {
		t.Errorf("%s: a new overlay over the same upper shows another state:\n%s", at, d)
	}
	left, err := afero.ReadDir(env.raw, layer{fs: env.raw, rooted: true}.path(workDir))
	if err != nil || len(left) != 0 {
		t.Errorf("%s: work directory after New holds %d names (%v), want none", at, len(left), err)
	}
}

// relCheckWorking checks that o keeps working after the fault: a new file
// can be written and read back, and an operation that failed can be redone.
func relCheckWorking(t *testing.T, at string, c relCase, o *Overlay, state string, after overlaytest.Tree) {
	t.Helper()
	if err := afero.WriteFile(o, "probe", []byte("probe"), 0o644); err != nil {
		t.Errorf("%s: WriteFile(probe) after the fault = %v", at, err)
	} else if got, err := afero.ReadFile(o, "probe"); err != nil || string(got) != "probe" {
		t.Errorf("%s: ReadFile(probe) = %q, %v, want \"probe\"", at, got, err)
	} else if err := o.Remove("probe"); err != nil {
		t.Errorf("%s: Remove(probe) = %v", at, err)
	}
	if state == "old" {
		if err := c.op(o); err != nil {
			t.Errorf("%s: redoing the operation after the fault: %v", at, err)
			return
		}
	}
	if d := overlaytest.Diff(after, relTree(t, o)); d != "" {
		t.Errorf("%s: after the operation is redone, the merged view differs from a clean run:\n%s", at, d)
	}
}

// relTree snapshots the merged view of o and checks that it shows no
// reserved name.
func relTree(t *testing.T, o *Overlay) overlaytest.Tree {
	t.Helper()
	tree, err := overlaytest.Snapshot(o, ".")
	if err != nil {
		t.Fatalf("walking the merged view: %v", err)
	}
	for name := range tree {
		for _, c := range strings.Split(name, "/") {
			if isReserved(c) {
				t.Errorf("the merged view shows the reserved name %q", name)
			}
		}
	}
	return tree
}

// TestLowerChangesUnderneath breaks the rule that lowers must not change
// while in use (a lower file replaced by a directory, a lower directory
// removed or replaced by a file, a lower file removed) and checks that the
// overlay still neither panics nor damages the upper: every call returns
// nil or the overlay's error types, the upper's own files keep their
// content, no partial copy or stray marker is left, and a new overlay over
// the same layers works.
//
// What the user sees, in this library version: the overlay remembers what
// the lowers showed at each name it has looked up and in each directory it
// has listed (its lower index), and goes on showing that. d/f, now a lower
// directory, still stats as a file and reads as empty (what the lower's
// handle on a directory yields); a removed lower directory still lists,
// and its children fail with ENOENT when opened; d/sub, now a lower file,
// is still a directory, so Chmod copies a directory up; a file added to a
// listed lower directory does not show. Names the upper holds are
// unaffected, a handle keeps reading the file it opened, and a new overlay
// sees the lowers as they are now. Run with -v to see the details.
func TestLowerChangesUnderneath(t *testing.T) {
	lower := afero.NewMemMapFs()
	for name, data := range map[string]string{"/d/f": "f", "/d/sub/x": "x", "/e/y": "y", "/gone/z": "z"} {
		lowerMust(t, lower.MkdirAll(path.Dir(name), 0o755))
		lowerMust(t, afero.WriteFile(lower, name, []byte(data), 0o644))
	}
	upper := afero.NewMemMapFs()
	o, err := New(upper, []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	if err := afero.WriteFile(o, "e/keep", []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := relTree(t, o) // the overlay has now looked every name up
	file, err := o.Open("d/f")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()

	lowerMust(t, lower.Remove("/d/f"))
	lowerMust(t, lower.Mkdir("/d/f", 0o755))
	lowerMust(t, afero.WriteFile(lower, "/d/f/inner", []byte("inner"), 0o644))
	lowerMust(t, lower.RemoveAll("/gone"))
	lowerMust(t, lower.RemoveAll("/d/sub"))
	lowerMust(t, afero.WriteFile(lower, "/d/sub", []byte("now a file"), 0o644))
	lowerMust(t, lower.Remove("/e/y"))
	lowerMust(t, afero.WriteFile(lower, "/e/new", []byte("new"), 0o644))

	if b, err := io.ReadAll(file); err != nil || string(b) != "f" {
		t.Errorf("reading a handle opened before the change = %q, %v, want the old \"f\"", b, err)
	}
	tree, err := overlaytest.Snapshot(o, ".")
	t.Logf("the merged view after the change (walk error: %v):\n%vbefore the change:\n%v", err, tree, before)
	for _, op := range lowerChangeOps {
		err := op.do(o)
		t.Logf("%s: %v", op.name, err)
		lowerCheckErr(t, op.name, err)
	}
	lowerCheckUpper(t, upper, lower)
	for _, fsys := range []afero.Fs{o, upper} {
		name := "e/keep"
		if fsys == upper {
			name = "/e/keep"
		}
		if got := readString(fsys, name); got != "keep" {
			t.Errorf("ReadFile(%s) in %s = %q, want the upper's \"keep\"", name, fsys.Name(), got)
		}
	}
}

// TestLowerChangesConcurrently flips lower names between file and
// directory while goroutines use the overlay on them: nothing may panic or
// race, every error must be of the overlay's types, and the upper must stay
// undamaged.
func TestLowerChangesConcurrently(t *testing.T) {
	lower := afero.NewMemMapFs()
	lowerMust(t, lower.MkdirAll("/d/sub", 0o755))
	upper := afero.NewMemMapFs()
	o, err := New(upper, []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	var errs stressErrs
	stressRun(t, 5, func(g int) {
		if g == 0 {
			lowerFlip(lower, &errs)
			return
		}
		for i := range 300 {
			n := lowerChangeOps[(g*7+i)%len(lowerChangeOps)]
			err := n.do(o)
			var pe *fs.PathError
			var le *os.LinkError
			if err != nil && !errors.As(err, &pe) && !errors.As(err, &le) {
				errs.add("%s: %T %v, want *fs.PathError or *os.LinkError", n.name, err, err)
			}
		}
	})
	errs.report(t)
	lowerCheckUpper(t, upper, lower)
}

// lowerFlip turns the lower names d/f, d/sub and gone back and forth
// between files and directories.
func lowerFlip(lower afero.Fs, errs *stressErrs) {
	for i := range 300 {
		for _, name := range []string{"/d/f", "/d/sub", "/gone", "/e/y"} {
			if err := lower.RemoveAll(name); err != nil {
				errs.add("changing the lower: %v", err)
			}
			var err error
			if i%2 == 0 {
				err = lower.MkdirAll(name+"/x", 0o755)
			} else {
				err = afero.WriteFile(lower, name, []byte("file"), 0o644)
			}
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs.add("changing the lower: %v", err)
			}
		}
	}
}

// lowerChangeOps are the operations TestLowerChangesUnderneath tries on
// the names whose lower copies changed.
var lowerChangeOps = []struct {
	name string
	do   func(o *Overlay) error
}{
	{"Stat(d/f)", func(o *Overlay) error { _, err := o.Stat("d/f"); return err }},
	{"ReadFile(d/f)", func(o *Overlay) error { _, err := afero.ReadFile(o, "d/f"); return err }},
	{"ReadDir(gone)", func(o *Overlay) error { _, err := afero.ReadDir(o, "gone"); return err }},
	{"ReadFile(d/sub)", func(o *Overlay) error { _, err := afero.ReadFile(o, "d/sub"); return err }},
	{"ReadDir(e)", func(o *Overlay) error { _, err := afero.ReadDir(o, "e"); return err }},
	{"ReadFile(e/y)", func(o *Overlay) error { _, err := afero.ReadFile(o, "e/y"); return err }},
	{"write d/f/new", func(o *Overlay) error { return afero.WriteFile(o, "d/f/new", []byte("new"), 0o644) }},
	{"write d/f", func(o *Overlay) error { return afero.WriteFile(o, "d/f", []byte("x"), 0o644) }},
	{"chmod d/sub", func(o *Overlay) error { return o.Chmod("d/sub", 0o600) }},
	{"chmod e/y", func(o *Overlay) error { return o.Chmod("e/y", 0o600) }},
	{"remove d/sub/x", func(o *Overlay) error { return o.Remove("d/sub/x") }},
	{"rename d/f moved", func(o *Overlay) error { return o.Rename("d/f", "moved") }},
	{"rename gone gone2", func(o *Overlay) error { return o.Rename("gone", "gone2") }},
	{"removeall gone", func(o *Overlay) error { return o.RemoveAll("gone") }},
	{"mkdir gone", func(o *Overlay) error { return o.Mkdir("gone", 0o755) }},
	{"removeall d", func(o *Overlay) error { return o.RemoveAll("d") }},
	{"remove e/y", func(o *Overlay) error { return o.Remove("e/y") }},
}

// lowerCheckErr fails t unless err is nil or of the overlay's error types.
func lowerCheckErr(t *testing.T, op string, err error) {
	t.Helper()
	var pe *fs.PathError
	var le *os.LinkError
	if err != nil && !errors.As(err, &pe) && !errors.As(err, &le) {
		t.Errorf("%s: %T %v, want *fs.PathError or *os.LinkError", op, err, err)
	}
}

// lowerCheckUpper checks that the upper is undamaged: the work directory
// is empty, every marker is an empty regular file, and a new overlay over
// the same layers can be walked.
func lowerCheckUpper(t *testing.T, upper, lower afero.Fs) {
	t.Helper()
	tree, err := overlaytest.Snapshot(upper, "/")
	if err != nil {
		t.Fatalf("walking the upper: %v", err)
	}
	for name, n := range tree {
		switch {
		case strings.HasPrefix(name, workDir+"/"):
			t.Errorf("the work directory holds %s", name)
		case name != workDir && strings.HasPrefix(path.Base(name), whiteoutPrefix) && (!n.Mode.IsRegular() || n.Data != ""):
			t.Errorf("the marker %s is a %v, want an empty file", name, n)
		}
	}
	o2, err := New(upper, []afero.Fs{lower})
	if err != nil {
		t.Fatalf("New over the same layers: %v", err)
	}
	t.Logf("a new overlay shows:\n%v", relTree(t, o2))
}

// lowerMust fails t if changing the lower failed.
func lowerMust(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("changing the lower: %v", err)
	}
}
