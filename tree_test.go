package overlay

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/afero"
)

// testStart is when the test binary started; an mtime after it (less a
// little slack for coarse kernel clocks) is "recent".
var testStart = time.Now()

// recentSlack absorbs the kernel's coarse timestamp clock, which can lag
// time.Now by a tick.
const recentSlack = 2 * time.Second

// isRecent reports whether t was stamped by this test run rather than
// preserved from a lower layer or set by Chtimes.
func isRecent(t time.Time) bool {
	return t.After(testStart.Add(-recentSlack))
}

// checkSameTree walks the merged trees of want and got from the root with
// Lstat and directory listings and returns every difference, joined with
// errors.Join, in the style of testing/fstest ("a/b: mode 0644, want 0600").
// It compares the set of names, the file type, the permission bits
// (including setuid, setgid and sticky), file contents, symlink targets and
// mtimes by class: when either side's mtime is not recent both must be
// equal, and otherwise both must be recent. The root's own attributes and
// name are never compared or reported.
func checkSameTree(want, got afero.Fs) error {
	var errs []error
	treeCompareDir(want, got, "", &errs)
	return errors.Join(errs...)
}

// displayPath returns the name used in reports for the relative path p.
func displayPath(p string) string {
	if p == "" {
		return "."
	}
	return p
}

// treeCompareDir compares the listings of directory p and recurses into the
// entries present on both sides.
func treeCompareDir(want, got afero.Fs, p string, errs *[]error) {
	report := func(format string, args ...any) {
		*errs = append(*errs, fmt.Errorf(format, args...))
	}
	wn, werr := listDirNames(want, "/"+p)
	gn, gerr := listDirNames(got, "/"+p)
	switch {
	case werr != nil && gerr != nil:
		report("%s: listing failed on both sides: %v; want side: %v", displayPath(p), gerr, werr)
		return
	case werr != nil:
		report("%s: listing succeeded, want error %v", displayPath(p), werr)
		return
	case gerr != nil:
		report("%s: listing: %v", displayPath(p), gerr)
		return
	}
	seen := map[string]int{}
	for _, n := range gn {
		seen[n]++
	}
	for n, c := range seen {
		if c > 1 {
			report("%s: listed %d times", displayPath(path.Join(p, n)), c)
		}
	}
	gn = sortedUnique(gn)
	wn = sortedUnique(wn)
	i, j := 0, 0
	for i < len(wn) || j < len(gn) {
		switch {
		case j == len(gn) || (i < len(wn) && wn[i] < gn[j]):
			q := path.Join(p, wn[i])
			report("%s: missing (want %s)", q, describeEntry(want, q))
			i++
		case i == len(wn) || gn[j] < wn[i]:
			q := path.Join(p, gn[j])
			report("%s: unexpected %s", q, describeEntry(got, q))
			j++
		default:
			treeCompareEntry(want, got, path.Join(p, wn[i]), errs)
			i++
			j++
		}
	}
}

// sortedUnique sorts names and drops repeats.
func sortedUnique(names []string) []string {
	sort.Strings(names)
	out := names[:0]
	for i, n := range names {
		if i == 0 || n != names[i-1] {
			out = append(out, n)
		}
	}
	return out
}

// treeCompareEntry compares the entry at relative path p on both sides and
// descends into it when it is a directory on both.
func treeCompareEntry(want, got afero.Fs, p string, errs *[]error) {
	report := func(format string, args ...any) {
		*errs = append(*errs, fmt.Errorf("%s: "+format, append([]any{p}, args...)...))
	}
	wfi, werr := lstatAny(want, "/"+p)
	gfi, gerr := lstatAny(got, "/"+p)
	if werr != nil || gerr != nil {
		if gerr == nil {
			report("lstat succeeded, want error %v", werr)
		} else {
			report("lstat: %v (want side: %v)", gerr, werr)
		}
		return
	}
	wt, gt := fileTypeName(wfi.Mode()), fileTypeName(gfi.Mode())
	if wt != gt {
		report("type %s, want %s", gt, wt)
		return
	}
	if wp, gp := unixPermBits(wfi.Mode()), unixPermBits(gfi.Mode()); wp != gp {
		report("mode %04o, want %04o", gp, wp)
	}
	if msg := mtimeDiff(wfi.ModTime(), gfi.ModTime()); msg != "" {
		report("%s", msg)
	}
	if msg := ownerDiff(wfi, gfi); msg != "" {
		report("%s", msg)
	}
	switch wt {
	case "file":
		wc, werr := readWhole(want, "/"+p)
		gc, gerr := readWhole(got, "/"+p)
		switch {
		case werr != nil || gerr != nil:
			if gerr != nil {
				report("read: %v (want side: %v)", gerr, werr)
			} else {
				report("read succeeded, want error %v", werr)
			}
		case wc != gc:
			report("content %s, want %s", quoteShort(gc), quoteShort(wc))
		}
	case "symlink":
		wl, werr := readlinkAny(want, "/"+p)
		gl, gerr := readlinkAny(got, "/"+p)
		switch {
		case werr != nil || gerr != nil:
			if gerr != nil {
				report("readlink: %v (want side: %v)", gerr, werr)
			} else {
				report("readlink succeeded, want error %v", werr)
			}
		case wl != gl:
			report("target %q, want %q", gl, wl)
		}
	case "dir":
		treeCompareDir(want, got, p, errs)
	}
}

// mtimeDiff returns a description of how got's mtime differs from want's
// under the class rule, or "" when they agree.
func mtimeDiff(want, got time.Time) string {
	if (isRecent(want) && isRecent(got)) || want.Equal(got) {
		return ""
	}
	return fmt.Sprintf("mtime %s, want %s", describeTime(got), describeTime(want))
}

// describeTime names a timestamp with its class.
func describeTime(t time.Time) string {
	s := t.UTC().Format(time.RFC3339Nano)
	if isRecent(t) {
		return "recent (" + s + ")"
	}
	return s
}

// fileTypeName names the file type of m: "file", "dir", "symlink", or the mode
// string for anything else (a leaked kernel whiteout shows as a device).
func fileTypeName(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "file"
	case fs.ModeDir:
		return "dir"
	case fs.ModeSymlink:
		return "symlink"
	}
	return "other (" + m.String() + ")"
}

// describeEntry summarizes the entry at relative path p for a report of a
// missing or unexpected name.
func describeEntry(fsys afero.Fs, p string) string {
	fi, err := lstatAny(fsys, "/"+p)
	if err != nil {
		return fmt.Sprintf("entry (lstat: %v)", err)
	}
	return fmt.Sprintf("%s %04o", fileTypeName(fi.Mode()), unixPermBits(fi.Mode()))
}

// quoteShort quotes s, eliding the middle of long contents.
func quoteShort(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q...(%d bytes)", s[:64], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// listDirNames lists directory name through Open and Readdirnames(-1), in the
// order the file system returns.
func listDirNames(fsys afero.Fs, name string) ([]string, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// lstatAny uses afero.Lstater where fsys has it and Stat otherwise.
func lstatAny(fsys afero.Fs, name string) (os.FileInfo, error) {
	if l, ok := fsys.(afero.Lstater); ok {
		fi, _, err := l.LstatIfPossible(name)
		return fi, err
	}
	return fsys.Stat(name)
}

// readlinkAny reads a symlink's target through afero.LinkReader.
func readlinkAny(fsys afero.Fs, name string) (string, error) {
	r, ok := fsys.(afero.LinkReader)
	if !ok {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: afero.ErrNoReadlink}
	}
	return r.ReadlinkIfPossible(name)
}

// readWhole returns the whole content of file name.
func readWhole(fsys afero.Fs, name string) (string, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return string(b), err
}

// TestCheckSameTreeDetects checks that checkSameTree reports each kind of
// difference, names it by its relative path, and accepts identical trees.
func TestCheckSameTreeDetects(t *testing.T) {
	base := layerSpec{
		"a":     specFile("x", 0o644),
		"d":     specDir(0o755),
		"d/e":   specDir(0o755),
		"d/e/f": specFile("deep", 0o600),
		"l":     specLink("a"),
	}
	with := func(changes layerSpec, drop ...string) layerSpec {
		s := layerSpec{}
		for k, v := range base {
			s[k] = v
		}
		for _, k := range drop {
			delete(s, k)
		}
		for k, v := range changes {
			s[k] = v
		}
		return s
	}
	tests := []struct {
		name string
		got  layerSpec
		// touch changes got after it is built (to make mtimes differ).
		touch func(t *testing.T, got afero.Fs)
		// want lists substrings of the report, one per expected difference.
		want []string
	}{
		{name: "identical", got: base},
		{name: "missing name", got: with(nil, "d/e/f"), want: []string{"d/e/f: missing (want file 0600)"}},
		{name: "extra name", got: with(layerSpec{"d/z": specDir(0o700)}), want: []string{"d/z: unexpected dir 0700"}},
		{name: "type", got: with(layerSpec{"a": specDir(0o644)}), want: []string{"a: type dir, want file"}},
		{name: "symlink type", got: with(layerSpec{"l": specFile("a", 0o777)}), want: []string{"l: type file, want symlink"}},
		{name: "mode", got: with(layerSpec{"a": specFile("x", 0o600)}), want: []string{"a: mode 0600, want 0644"}},
		{name: "setuid", got: with(layerSpec{"a": specFile("x", 0o644|fs.ModeSetuid)}), want: []string{"a: mode 4644, want 0644"}},
		{name: "sticky dir", got: with(layerSpec{"d": specDir(0o755 | fs.ModeSticky)}), want: []string{"d: mode 1755, want 0755"}},
		{name: "content", got: with(layerSpec{"d/e/f": specFile("DEEP", 0o600)}), want: []string{`d/e/f: content "DEEP", want "deep"`}},
		{name: "target", got: with(layerSpec{"l": specLink("d")}), want: []string{`l: target "d", want "a"`}},
		{
			name:  "mtime recent vs fixed",
			got:   base,
			touch: func(t *testing.T, got afero.Fs) { mustChtimes(t, got, "d/e/f", time.Now()) },
			want:  []string{"d/e/f: mtime recent (", "want 2001-01-01T00:00:00Z"},
		},
		{
			name:  "mtime fixed vs fixed",
			got:   base,
			touch: func(t *testing.T, got afero.Fs) { mustChtimes(t, got, "a", chtimesTime) },
			want:  []string{"a: mtime 2010-05-05T00:00:00Z, want 2001-01-01T00:00:00Z"},
		},
		{
			name: "every difference at once",
			got:  with(layerSpec{"a": specFile("y", 0o600), "z": specFile("", 0o644)}, "d/e", "d/e/f"),
			want: []string{"a: mode 0600, want 0644", `a: content "y", want "x"`, "d/e: missing (want dir 0755)", "z: unexpected file 0644"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantFs, gotFs := plainDirFs(t, base), plainDirFs(t, tc.got)
			if tc.touch != nil {
				tc.touch(t, gotFs)
			}
			err := checkSameTree(wantFs, gotFs)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("checkSameTree reported differences between identical trees:\n%v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("checkSameTree found no difference, want %q", tc.want)
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("report lacks %q:\n%s", w, msg)
				}
			}
			if n := strings.Count(msg, "\n") + 1; n != len(tc.want) && tc.name == "every difference at once" {
				t.Errorf("report has %d lines, want %d:\n%s", n, len(tc.want), msg)
			}
			if strings.Contains(msg, os.TempDir()) {
				t.Errorf("report names the root:\n%s", msg)
			}
		})
	}
	t.Run("both recent", func(t *testing.T) {
		wantFs, gotFs := plainDirFs(t, base), plainDirFs(t, base)
		mustChtimes(t, wantFs, "a", time.Now().Add(-time.Second))
		mustChtimes(t, gotFs, "a", time.Now())
		if err := checkSameTree(wantFs, gotFs); err != nil {
			t.Fatalf("two recent mtimes must agree: %v", err)
		}
	})
	t.Run("memory against disk", func(t *testing.T) {
		noLinks := with(nil, "l")
		if err := checkSameTree(plainDirFs(t, noLinks), buildMemLayer(t, noLinks)); err != nil {
			t.Fatalf("the same spec built on disk and in memory differs: %v", err)
		}
	})
}

// plainDirFs builds spec (without markers) as a plain directory.
func plainDirFs(t *testing.T, spec layerSpec) afero.Fs {
	t.Helper()
	dir := t.TempDir()
	writeDiskLayer(t, dir, spec, layoutKernel)
	return newOSDirFs(dir)
}

// mustChtimes sets name's atime and mtime to tm.
func mustChtimes(t *testing.T, fsys afero.Fs, name string, tm time.Time) {
	t.Helper()
	if err := fsys.Chtimes(name, tm, tm); err != nil {
		t.Fatal(err)
	}
}

// TestCheckSameTreeFailsForCopyOnWriteFs proves that the harness tells
// afero's CopyOnWriteFs apart from the kernel overlay where they differ,
// and that it accepts the two where they agree.
func TestCheckSameTreeFailsForCopyOnWriteFs(t *testing.T) {
	cow := func(t *testing.T, lowers ...layerSpec) afero.Fs {
		var base afero.Fs = afero.NewMemMapFs()
		for i := len(lowers) - 1; i >= 0; i-- {
			base = afero.NewCopyOnWriteFs(base, ociMemLower(t, lowers[i]))
		}
		return afero.NewCopyOnWriteFs(base, afero.NewMemMapFs())
	}
	plain := []layerSpec{
		{"a": specFile("top", 0o600), "d": specDir(0o750), "d/x": specFile("x", 0o644)},
		{"d": specDir(0o700), "d/y": specFile("y", 0o644), "e/f": specFile("f", 0o640)},
	}
	t.Run("identical trees pass", func(t *testing.T) {
		k := kernelOracle(t, plain...)
		if err := checkSameTree(k, k); err != nil {
			t.Fatalf("kernel against itself: %v", err)
		}
		if err := checkSameTree(k, cow(t, plain...)); err != nil {
			t.Fatalf("CopyOnWriteFs over plain layers should match the kernel: %v", err)
		}
	})
	t.Run("remove of a lower file", func(t *testing.T) {
		k, c := kernelOracle(t, plain...), cow(t, plain...)
		if err := k.Remove("d/y"); err != nil {
			t.Fatalf("kernel Remove: %v", err)
		}
		cerr := c.Remove("d/y")
		err := checkSameTree(k, c)
		if err == nil || !strings.Contains(err.Error(), "d/y: unexpected file") {
			t.Fatalf("checkSameTree missed the lower file CopyOnWriteFs failed to remove (its Remove said %v): %v", cerr, err)
		}
	})
	t.Run("whiteout", func(t *testing.T) {
		lowers := []layerSpec{{whKey("d/y"): specMarker, "d": specDir(0o700)}, plain[1]}
		err := checkSameTree(kernelOracle(t, lowers...), cow(t, lowers...))
		if err == nil || !strings.Contains(err.Error(), "d/y: unexpected file") || !strings.Contains(err.Error(), "d/.wh.y: unexpected file") {
			t.Fatalf("checkSameTree missed CopyOnWriteFs ignoring a whiteout: %v", err)
		}
	})
}

// ownerDiff describes how got's owner differs from want's, "" if it does
// not or if either side does not tell (MemMapFs layers).
func ownerDiff(want, got fs.FileInfo) string {
	w, wok := want.Sys().(*syscall.Stat_t)
	g, gok := got.Sys().(*syscall.Stat_t)
	if !wok || !gok || w.Uid == g.Uid && w.Gid == g.Gid {
		return ""
	}
	return fmt.Sprintf("owner %d:%d, want %d:%d", g.Uid, g.Gid, w.Uid, w.Gid)
}
