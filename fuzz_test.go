package overlay

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"pgregory.net/rapid"
)

// fuzzFixture is a named pair of lower layers (L1 topmost) that fuzz inputs
// select with their first byte. Fixtures hold no symlinks: FuzzOps runs the
// overlay over MemMapFs layers.
type fuzzFixture struct {
	name   string
	lowers []layerSpec
}

// fuzzFixtures are the layer pairs FuzzOps chooses from. Their order is part
// of the corpus encoding: append, never reorder.
var fuzzFixtures = []fuzzFixture{
	{name: "rich", lowers: []layerSpec{
		{
			"a":           specFile("top-a", 0o644),
			"d":           specDir(0o750),
			"d/x":         specFile("L1 x", 0o600),
			whKey("d/y"):  specMarker,
			"c":           specDir(0o711),
			opqKey("c"):   specMarker,
			"c/n":         specFile("n", 0o644),
			whKey("x"):    specMarker,
			"b":           specDir(0o700),
			whKey("b/zz"): specMarker,
		},
		{
			"a":     specDir(0o755),
			"a/b":   specFile("hidden by L1 file a", 0o644),
			"a/c":   specDir(0o755),
			"b":     specDir(0o755),
			"b/a":   specFile("L2 b/a", 0o644),
			"d":     specDir(0o755),
			"d/y":   specFile("whited out", 0o644),
			"d/e":   specDir(0o711),
			"d/e/f": specFile("deep", 0o640),
			"x":     specFile("whited out", 0o644),
			"c":     specDir(0o755),
			"c/old": specFile("hidden by opaque c", 0o644),
		},
	}},
	{name: "empty", lowers: []layerSpec{{}, {}}},
	{name: "lower-only-deep", lowers: []layerSpec{
		{},
		{
			"d":     specDir(0o750),
			"d/e":   specDir(0o711),
			"d/e/f": specFile("deep lower", 0o640),
			"d/x":   specDir(0o700),
			"b":     specFile("setuid", 0o755|fs.ModeSetuid),
			"c":     specDir(0o775 | fs.ModeSetgid),
			"c/n":   specFile("n", 0o644),
		},
	}},
	{name: "shadowing", lowers: []layerSpec{
		{
			"d":   specFile("file over dir", 0o644),
			"b":   specDir(0o755),
			"b/a": specFile("dir over file", 0o600),
			"c":   specDir(0o777 | fs.ModeSticky),
		},
		{
			"d":     specDir(0o755),
			"d/e/f": specFile("hidden", 0o644),
			"b":     specFile("hidden file", 0o644),
			"c":     specDir(0o700),
			"c/old": specFile("merged", 0o644),
			"a/b":   specFile("a/b", 0o644),
		},
	}},
}

// fuzzSeed is a named operation script over one fixture.
type fuzzSeed struct {
	name    string
	fixture int
	ops     []fsOp
}

// bytes encodes the seed as a FuzzOps input: the fixture byte, then the
// script.
func (s fuzzSeed) bytes() ([]byte, error) {
	b, err := encodeScript(s.ops)
	if err != nil {
		return nil, fmt.Errorf("seed %s: %w", s.name, err)
	}
	return append([]byte{byte(s.fixture)}, b...), nil
}

// Fixture indices, for readable seeds.
const (
	fxRich = iota
	fxEmpty
	fxDeep
	fxShadow
)

// fuzzSeeds are the seed scripts committed under testdata/fuzz/FuzzOps and
// replayed by TestOracleAgreesWithFlatDir.
var fuzzSeeds = []fuzzSeed{
	{"remove-lower-file", fxRich, []fsOp{doRemove("b/a"), doStat("b/a"), doReadDirNames("b"), doRemove("b"), doReadDirNames("/")}},
	{"remove-merged-dir", fxRich, []fsOp{doRemove("d"), doRemove("d/x"), doRemove("d/e/f"), doRemove("d/e"), doRemove("d"), doStat("d")}},
	{"removeall-then-mkdir-is-opaque", fxRich, []fsOp{doRemoveAll("d"), doStat("d/e/f"), doMkdir("d", 0o700), doReadDirNames("d"), doMkdir("d/e", 0o755), doReadDirNames("d/e")}},
	{"write-file-shadowing-dir", fxRich, []fsOp{doWrite("a", "hello", 0o600), doRead("a"), doStat("a/b"), doWrite("a/c", "x", 0o644)}},
	{"whiteout-recreate", fxRich, []fsOp{doStat("x"), doRead("d/y"), doWrite("x", "new content", 0o644), doRead("x"), doMkdir("d/y", 0o755), doReadDirNames("d"), doReadDirNames("/")}},
	{"opaque-dir", fxRich, []fsOp{doReadDirNames("c"), doStat("c/old"), doWrite("c/old", "x", 0o644), doReadDirNames("c"), doRemove("c/n"), doRemove("c/old"), doRemove("c")}},
	{"rename-merged-dir", fxRich, []fsOp{doRename("d", "x"), doReadDirNames("x"), doStat("d"), doMkdir("d", 0o755), doReadDirNames("d"), doRename("x", "d/e")}},
	{"rename-lower-dir", fxDeep, []fsOp{doRename("d", "a"), doReadDirNames("a"), doStat("d/e"), doMkdir("d", 0o711), doRename("a", "d/x"), doRename("d", "a")}},
	{"rename-file-over-file", fxRich, []fsOp{doRename("b/a", "a"), doRead("a"), doStat("b/a"), doRename("d/x", "d/e/f"), doRead("d/e/f"), doReadDirNames("d")}},
	{"rename-errors", fxRich, []fsOp{doRename("d", "b"), doRename("d", "d/e"), doRename("x", "c"), doRename("b", "a"), doRename("d", "d"), doRename("a", "a/b")}},
	{"open-flags", fxDeep, []fsOp{
		{Kind: fopOpenFile, Path: "b", Flag: os.O_RDONLY | os.O_TRUNC, Mode: 0o644, Data: "x"},
		doRead("b"),
		{Kind: fopOpenFile, Path: "d/e/f", Flag: os.O_CREATE | os.O_EXCL | os.O_WRONLY, Mode: 0o644, Data: "x"},
		{Kind: fopOpenFile, Path: "d/e/f", Flag: os.O_RDWR, Mode: 0o644, Data: "hello"},
		doRead("d/e/f"),
		{Kind: fopOpenFile, Path: "d", Flag: os.O_WRONLY | os.O_TRUNC, Mode: 0o644, Data: "x"},
		{Kind: fopOpenFile, Path: "a", Flag: os.O_CREATE | os.O_WRONLY, Mode: 0o600, Data: "new content"},
		doStat("a"),
	}},
	{"copy-up-deep-file", fxDeep, []fsOp{doAppend("d/e/f", "hello"), doRead("d/e/f"), doStat("d"), doStat("d/e"), doReadDirNames("d")}},
	{"chmod-chtimes", fxDeep, []fsOp{doChmod("d/e/f", 0o755|fs.ModeSetuid), doChtimes("d/e"), doChmod("d", 0o777|fs.ModeSticky), doStat("d/e/f"), doLstat("d")}},
	{"truncate-and-read-handle-follows", fxRich, []fsOp{doTruncate("d/e/f", 3), doRead("d/e/f"), doReadHandleFollows("b/a"), doReadHandleFollows("a"), doReadHandleFollows("d")}},
	{"mkdirall", fxShadow, []fsOp{doMkdirAll("d/e/f", 0o755), doMkdirAll("b/a", 0o700), doMkdirAll("c/old", 0o750), doMkdirAll("a/c", 0o711), doReadDirNames("a")}},
	{"empty-basics", fxEmpty, []fsOp{doWrite("a", "x", 0o644), doMkdir("d", 0o750), doRename("a", "d/x"), doReadDirNames("d"), doReadlink("d/x"), doRemoveAll("d"), doReadDirNames("/")}},
	{"dir-over-file-and-file-over-dir", fxShadow, []fsOp{doStat("d/e"), doReadDirNames("b"), doReadDirNames("c"), doStat("c"), doRemove("d"), doReadDirNames("/"), doMkdir("d", 0o755), doReadDirNames("d")}},
	{"setgid-inheritance", fxDeep, []fsOp{doMkdir("c/old", 0o700), doStat("c/old"), doWrite("c/n", "x", 0o644), doMkdirAll("c/old", 0o755), doChmod("c", 0o755)}},
	{"remove-everything", fxRich, []fsOp{doRemoveAll("a"), doRemoveAll("b"), doRemoveAll("c"), doRemoveAll("d"), doReadDirNames("/")}},
}

// FuzzOps decodes a fixture byte and an operation script from its input,
// applies the script to the overlay over MemMapFs layers and to a plain
// directory holding the fixture's merged content, and requires equal
// results (errno class and data) for every operation and equal merged trees
// after each. Symlink operations are skipped: MemMapFs layers have none.
func FuzzOps(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		fx := fuzzFixtures[int(data[0])%len(fuzzFixtures)]
		ls := &lockstep{
			oracle:     flatDirFs(t, fx.lowers...),
			subject:    buildSubject(t, memLayers, fx.lowers...),
			oracleName: "flat dir",
			lowers:     fx.lowers,
			same:       sameErrnoClass,
		}
		for _, o := range decodeScript(data[1:]) {
			if o.Kind == fopSymlink {
				continue
			}
			_, _, problem := ls.apply(o)
			if problem == "" {
				problem = ls.checkTree()
			}
			if problem != "" {
				t.Fatal(ls.report("fixture " + fx.name + ": " + problem))
			}
		}
	})
}

// sameErrnoClass reports whether two results agree for FuzzOps: same data
// and errnos of the same class.
func sameErrnoClass(want, got opResult) bool {
	return want.Data == got.Data && errnoClass(want) == errnoClass(got)
}

// errnoClass is currently the errno itself: the flattened directory and
// the kernel overlay were observed to agree on every errno the vocabulary
// produces (TestOracleAgreesWithFlatDir checks it).
func errnoClass(r opResult) string {
	return r.String()
}

// corpusDir is where FuzzOps's committed seed corpus lives.
var corpusDir = filepath.Join("testdata", "fuzz", "FuzzOps")

// corpusFile renders a FuzzOps input in the "go test fuzz v1" format.
func corpusFile(input []byte) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", input)
}

// TestFuzzCorpus checks that every seed in fuzzSeeds is committed under
// testdata/fuzz/FuzzOps with its current encoding. Run it once with
// OVERLAY_WRITE_CORPUS=1 to (re)write the files after changing seeds.
func TestFuzzCorpus(t *testing.T) {
	write := os.Getenv("OVERLAY_WRITE_CORPUS") == "1"
	if write {
		if err := os.MkdirAll(corpusDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range fuzzSeeds {
		input, err := s.bytes()
		if err != nil {
			t.Fatal(err)
		}
		if got := decodeScript(input[1:]); fmt.Sprint(got) != fmt.Sprint(s.ops) {
			t.Errorf("seed %s does not survive encoding:\n got %v\nwant %v", s.name, got, s.ops)
		}
		file := filepath.Join(corpusDir, "seed-"+s.name)
		want := corpusFile(input)
		if write {
			if err := os.WriteFile(file, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(file)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is missing or stale (err %v); rerun with OVERLAY_WRITE_CORPUS=1", file, err)
		}
	}
}

// TestOpScriptRoundTrip checks that decoding is total and that encoding a
// decoded script yields a script that decodes to the same operations.
func TestOpScriptRoundTrip(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		in := rapid.SliceOf(rapid.Byte()).Draw(rt, "input")
		ops := decodeScript(in)
		b, err := encodeScript(ops)
		if err != nil {
			rt.Fatalf("encode(decode(%x)): %v", in, err)
		}
		if again := decodeScript(b); fmt.Sprint(again) != fmt.Sprint(ops) {
			rt.Fatalf("round trip changed the script:\n%v\n%v", ops, again)
		}
	})
}

// TestOracleAgreesWithFlatDir validates the harness without the library:
// the kernel overlay and a plain directory holding the same merged content
// must agree, operation by operation and tree by tree, on every fuzz seed,
// on every kernel scenario (whose pinned kernel results are checked here
// too) and on random layers and scripts (including symlinks), since both
// keep POSIX semantics.
func TestOracleAgreesWithFlatDir(t *testing.T) {
	kernelOracle(t)
	kernelVsFlat := func(tb harnessTB, lowers ...layerSpec) *lockstep {
		k, err := kernelMount(tb, lowers...)
		if err != nil {
			tb.Fatalf("mounting the kernel oracle: %v", err)
		}
		return &lockstep{oracle: k, subject: flatDirFs(tb, lowers...), oracleName: "kernel",
			subjectName: "flat dir", subjectSorts: true, lowers: lowers}
	}
	t.Run("seeds", func(t *testing.T) {
		for _, s := range fuzzSeeds {
			fx := fuzzFixtures[s.fixture]
			ls := kernelVsFlat(t, fx.lowers...)
			if p := ls.checkTree(); p != "" {
				t.Fatalf("seed %s: %s", s.name, ls.report(p))
			}
			for _, o := range s.ops {
				_, _, p := ls.apply(o)
				if p == "" {
					p = ls.checkTree()
				}
				if p != "" {
					t.Fatalf("seed %s: %s", s.name, ls.report(p))
				}
			}
		}
	})
	t.Run("scenarios", func(t *testing.T) {
		for _, sc := range kernelScenarios {
			t.Run(sc.name, func(t *testing.T) { runScenario(t, sc, kernelVsFlat) })
		}
	})
	t.Run("random", func(t *testing.T) {
		rapidDefault(t, "rapid.checks", "RAPID_CHECKS", "100")
		rapid.Check(t, func(rt *rapid.T) { runRandom(rt, true, kernelVsFlat) })
	})
}
