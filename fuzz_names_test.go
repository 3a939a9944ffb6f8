package overlay

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay/overlaytest"
)

// The fuzz targets feed hostile names and symlink targets to the overlay.
// Their seed corpora are in testdata/fuzz/<target>/; run one with
//
//	go test -run='^$' -fuzz='^FuzzCleanName$' -fuzztime=3m .

// fuzzSentinel is the content of the files planted outside the layers; it
// must never come back through the overlay.
const fuzzSentinel = "SENTINEL: outside the layers"

// fuzzSandbox is a directory holding a disk upper, a read-only disk lower
// and, beside them, files that no layer holds.
type fuzzSandbox struct {
	root, upper, lower string
	outside            overlaytest.Tree // everything but the layers, as planted
	lowerTree          overlaytest.Tree
}

// newFuzzSandbox plants the sentinel files root/secret and
// root/outside/secret, the lower files d/file and e/x, and the upper file
// u/file, and calls plant for the rest of the lower.
func newFuzzSandbox(t *testing.T, plant func(lower string) error) (*fuzzSandbox, bool) {
	t.Helper()
	root := t.TempDir()
	s := &fuzzSandbox{root: root, upper: filepath.Join(root, "upper"), lower: filepath.Join(root, "lower")}
	files := map[string]string{
		"secret":         fuzzSentinel,
		"outside/secret": fuzzSentinel,
		"lower/d/file":   "inside: lower",
		"lower/e/x":      "inside: lower",
		"upper/u/file":   "inside: upper",
	}
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if plant != nil {
		if err := plant(s.lower); err != nil {
			return nil, false // a target the host refuses: nothing to test
		}
	}
	s.outside = s.outsideTree(t)
	s.lowerTree = fuzzHostTree(t, s.lower)
	return s, true
}

// overlay returns an overlay of the sandbox's upper over its lower.
func (s *fuzzSandbox) overlay(t *testing.T) *Overlay {
	t.Helper()
	lower := afero.NewReadOnlyFs(afero.NewBasePathFs(afero.NewOsFs(), s.lower))
	o, err := New(afero.NewBasePathFs(afero.NewOsFs(), s.upper), []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// outsideTree returns everything in the sandbox except the two layers.
func (s *fuzzSandbox) outsideTree(t *testing.T) overlaytest.Tree {
	t.Helper()
	tree := fuzzHostTree(t, s.root)
	for name := range tree {
		if name == "upper" || name == "lower" || strings.HasPrefix(name, "upper/") || strings.HasPrefix(name, "lower/") {
			delete(tree, name)
		}
	}
	return tree
}

// fuzzHostTree snapshots the host directory dir, symlinks unfollowed.
func fuzzHostTree(t *testing.T, dir string) overlaytest.Tree {
	t.Helper()
	tree, err := overlaytest.Snapshot(afero.NewOsFs(), dir)
	if err != nil {
		t.Fatalf("snapshot of %s: %v", dir, err)
	}
	return tree
}

// checkUntouched fails t if anything outside the upper changed.
func (s *fuzzSandbox) checkUntouched(t *testing.T) {
	t.Helper()
	if d := overlaytest.Diff(s.outside, s.outsideTree(t)); d != "" {
		t.Fatalf("the overlay changed files outside its layers:\n%s", d)
	}
	if d := overlaytest.Diff(s.lowerTree, fuzzHostTree(t, s.lower)); d != "" {
		t.Fatalf("the overlay changed its lower layer:\n%s", d)
	}
}

// fuzzCheckErr fails t unless err is nil or of the overlay's error types,
// and names no host path of the sandbox.
func fuzzCheckErr(t *testing.T, s *fuzzSandbox, op string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var pe *fs.PathError
	var le *os.LinkError
	if !errors.As(err, &pe) && !errors.As(err, &le) {
		t.Errorf("%s = %T %v, want *fs.PathError or *os.LinkError", op, err, err)
	}
	if strings.Contains(err.Error(), s.root) {
		t.Errorf("%s = %v: the error shows a host path", op, err)
	}
}

func FuzzCleanName(f *testing.F) {
	f.Fuzz(func(t *testing.T, name string) {
		fuzzCheckClean(t, name)
		s, _ := newFuzzSandbox(t, nil)
		o := s.overlay(t)
		for _, op := range fuzzNameOps {
			fuzzCheckErr(t, s, op.name+"("+name+")", op.do(o, name))
		}
		s.checkUntouched(t)
	})
}

// fuzzCheckClean checks cleanName's result for name. Names need not be
// valid UTF-8: as on Linux, a name is any bytes but NUL and "/", and layers
// built on io/fs, which cannot hold such names, simply do not have them.
func fuzzCheckClean(t *testing.T, name string) {
	t.Helper()
	clean, err := cleanName(name)
	if slow, slowErr := cleanSlowly(name); slow != clean || !errors.Is(err, slowErr) && err != slowErr {
		t.Fatalf("cleanName(%q) = %q, %v; the long way gives %q, %v", name, clean, err, slow, slowErr)
	}
	if err != nil {
		long := slices.ContainsFunc(strings.Split(name, "/"), func(c string) bool { return len(c) > maxNameLen })
		switch {
		case errors.Is(err, syscall.EINVAL) && (strings.IndexByte(name, 0) >= 0 || strings.Contains(name, whiteoutPrefix)):
		case errors.Is(err, syscall.ENAMETOOLONG) && long:
		default:
			t.Fatalf("cleanName(%q) = %v, want a valid name, EINVAL (NUL, .wh.) or ENAMETOOLONG", name, err)
		}
		return
	}
	if clean != "." && (path.Clean(clean) != clean || path.IsAbs(clean)) {
		t.Fatalf("cleanName(%q) = %q, not a clean unrooted name", name, clean)
	}
	for _, c := range strings.Split(clean, "/") {
		if c == ".." || (c == "." && clean != ".") || isReserved(c) || len(c) > maxNameLen {
			t.Fatalf("cleanName(%q) = %q, which holds the component %q", name, clean, c)
		}
	}
	if again, err := cleanName(clean); err != nil || again != clean {
		t.Fatalf("cleanName(cleanName(%q)) = %q, %v, want %q", name, again, err, clean)
	}
	if rooted, err := cleanName("/" + name); err != nil || rooted != clean {
		t.Fatalf("cleanName(\"/\"+%q) = %q, %v, want %q", name, rooted, err, clean)
	}
}

// fuzzNameOps are the operations FuzzCleanName tries on each name.
var fuzzNameOps = []struct {
	name string
	do   func(o *Overlay, name string) error
}{
	{"Stat", func(o *Overlay, n string) error { _, err := o.Stat(n); return err }},
	{"Lstat", func(o *Overlay, n string) error { _, _, err := o.LstatIfPossible(n); return err }},
	{"ReadFile", func(o *Overlay, n string) error { _, err := afero.ReadFile(o, n); return fuzzIgnoreDir(err) }},
	{"ReadDir", func(o *Overlay, n string) error { _, err := afero.ReadDir(o, n); return err }},
	{"Create", func(o *Overlay, n string) error {
		f, err := o.OpenFile(n, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		_, err = f.Write([]byte("created"))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}},
	{"Mkdir", func(o *Overlay, n string) error { return o.Mkdir(n+"-dir", 0o755) }},
	{"MkdirAll", func(o *Overlay, n string) error { return o.MkdirAll(n+"-all/x", 0o755) }},
	{"Chmod", func(o *Overlay, n string) error { return o.Chmod(n, 0o600) }},
	{"Chtimes", func(o *Overlay, n string) error { return o.Chtimes(n, time.Unix(1, 0), time.Unix(2, 0)) }},
	{"Chown", func(o *Overlay, n string) error { return o.Chown(n, os.Getuid(), os.Getgid()) }},
	{"Symlink", func(o *Overlay, n string) error { return o.SymlinkIfPossible("d/file", n+"-link") }},
	{"Readlink", func(o *Overlay, n string) error { _, err := o.ReadlinkIfPossible(n + "-link"); return err }},
	{"RenameFrom", func(o *Overlay, n string) error { return o.Rename(n, "renamed") }},
	{"RenameTo", func(o *Overlay, n string) error { return o.Rename("e/x", n) }},
	{"Remove", func(o *Overlay, n string) error { return o.Remove(n) }},
	{"RemoveAll", func(o *Overlay, n string) error { return o.RemoveAll(n) }},
}

// fuzzIgnoreDir turns the EISDIR of reading a directory into nil.
func fuzzIgnoreDir(err error) error {
	if errors.Is(err, syscall.EISDIR) {
		return nil
	}
	return err
}

func FuzzSymlinkEscape(f *testing.F) {
	f.Fuzz(func(t *testing.T, target1, target2, name string) {
		var root string
		s, ok := newFuzzSandbox(t, func(lower string) error {
			root = filepath.Dir(lower)
			target1 = strings.ReplaceAll(target1, "@", root) // "@" stands for the sandbox's host path
			target2 = strings.ReplaceAll(target2, "@", root)
			links := map[string]string{"l1": target1, "d/l2": target2, "loop": "loop", "a": "b", "b": "a"}
			for link, target := range links {
				if err := os.Symlink(target, filepath.Join(lower, link)); err != nil {
					return err
				}
			}
			return nil
		})
		if !ok {
			return
		}
		o := s.overlay(t)
		for _, loop := range []string{"loop", "a", "b", "a/x"} {
			if _, err := o.Stat(loop); !errors.Is(err, syscall.ELOOP) {
				t.Fatalf("Stat(%s) = %v, want ELOOP", loop, err)
			}
		}
		if err := o.SymlinkIfPossible(target2, "u/l3"); err != nil {
			fuzzCheckErr(t, s, "Symlink", err)
		}
		names := []string{name, "l1", "d/l2", "u/l3", "l1/" + name, "d/l2/" + name, "u/l3/" + name,
			"l1/secret", "d/l2/secret", "u/l3/secret", "l1/outside/secret", "d/l2/outside/secret"}
		for _, n := range names {
			fuzzResolve(t, s, o, n)
		}
		if fuzzHostSafe(s, name, target1, target2) {
			for _, n := range names {
				fuzzCreate(t, s, o, n)
			}
			for _, n := range names {
				fuzzResolve(t, s, o, n)
			}
		}
		s.checkUntouched(t)
	})
}

// fuzzResolve looks n up through o in every way, and fails t if anything
// read comes from outside the layers.
func fuzzResolve(t *testing.T, s *fuzzSandbox, o *Overlay, n string) {
	t.Helper()
	_, err := o.Stat(n)
	fuzzCheckErr(t, s, "Stat("+n+")", err)
	_, _, err = o.LstatIfPossible(n)
	fuzzCheckErr(t, s, "Lstat("+n+")", err)
	_, err = o.ReadlinkIfPossible(n)
	fuzzCheckErr(t, s, "Readlink("+n+")", err)
	data, err := afero.ReadFile(o, n)
	fuzzCheckErr(t, s, "ReadFile("+n+")", fuzzIgnoreDir(err))
	if err == nil && !strings.HasPrefix(string(data), "inside") && string(data) != "created" {
		t.Fatalf("ReadFile(%q) = %.60q: content from outside the layers", n, data)
	}
	infos, err := afero.ReadDir(o, n)
	fuzzCheckErr(t, s, "ReadDir("+n+")", err)
	for _, fi := range infos {
		if isReserved(fi.Name()) {
			t.Fatalf("ReadDir(%q) shows %q", n, fi.Name())
		}
	}
}

// fuzzCreate creates a file and a directory at n (through any symlinks),
// never touching an existing file.
func fuzzCreate(t *testing.T, s *fuzzSandbox, o *Overlay, n string) {
	t.Helper()
	f, err := o.OpenFile(n, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err == nil {
		_, err = f.Write([]byte("created"))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	fuzzCheckErr(t, s, "Create("+n+")", err)
	fuzzCheckErr(t, s, "Mkdir("+n+"-dir)", o.Mkdir(n+"-dir", 0o755))
}

// fuzzHostSafe reports whether creating files through the symlinks is safe
// for the host even if the overlay had an escape bug: every target, read
// as the host would, points into the sandbox, and name climbs nowhere.
func fuzzHostSafe(s *fuzzSandbox, name string, targets ...string) bool {
	if strings.Contains(name, "..") {
		return false
	}
	dirs := []string{s.lower, filepath.Join(s.lower, "d"), filepath.Join(s.upper, "u")}
	for _, target := range targets {
		if strings.Contains(target, "..") && !strings.HasPrefix(path.Clean(target), "..") {
			return false // a ".." after a symlink climbs from where the symlink points
		}
		for _, dir := range dirs {
			p := target
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			if !strings.HasPrefix(filepath.Clean(p)+"/", s.root+"/") {
				return false
			}
		}
	}
	return true
}

// fuzzDirLowers returns the lowers of FuzzDirHandle's merged directory m,
// and m's merged listing once the upper holds u1, u2 and a whiteout for
// gone: the names in order, and which are directories. The topmost copy
// of a name decides its type, and whiteouts hide.
func fuzzDirLowers() (lowers []afero.Fs, want []string, dirs map[string]bool) {
	file := &fstest.MapFile{Data: []byte("x"), Mode: 0o644}
	dir := &fstest.MapFile{Mode: fs.ModeDir | 0o755}
	l1 := fstest.MapFS{
		"m/both":          file,
		"m/l1":            file,
		"m/dir-over-file": dir,
		"m/file-over-dir": file,
		"m/.wh.hidden":    file,
		"m/sub/a":         file,
	}
	l2 := fstest.MapFS{
		"m/both":            file,
		"m/l2":              file,
		"m/hidden":          file,
		"m/dir-over-file":   file,
		"m/file-over-dir/x": file,
		"m/gone":            file,
		"m/sub/b":           file,
	}
	want = []string{"both", "dir-over-file", "file-over-dir", "l1", "l2", "sub", "u1", "u2"}
	dirs = map[string]bool{"dir-over-file": true, "sub": true}
	return []afero.Fs{afero.FromIOFS{FS: l1}, afero.FromIOFS{FS: l2}}, want, dirs
}

func FuzzDirHandle(f *testing.F) {
	f.Fuzz(func(t *testing.T, ops []byte) {
		lowers, want, dirs := fuzzDirLowers()
		o, err := New(afero.NewMemMapFs(), lowers)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"m/u1", "m/u2"} {
			if err := afero.WriteFile(o, n, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := o.Remove("m/gone"); err != nil {
			t.Fatal(err)
		}
		h, err := o.Open("m")
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		pos := 0
		for i, b := range ops[:min(len(ops), 256)] {
			if b&3 == 3 {
				if off, err := h.Seek(0, io.SeekStart); off != 0 || err != nil {
					t.Fatalf("op %d: Seek(0, SeekStart) = %d, %v, want 0, nil", i, off, err)
				}
				pos = 0
				continue
			}
			n := int(b>>2)%8 - 2
			got, isDir, err := fuzzReadDir(h, b&3, n)
			end := len(want)
			if n > 0 {
				end = min(pos+n, len(want))
			}
			switch {
			case n > 0 && pos == len(want):
				if len(got) != 0 || err != io.EOF {
					t.Fatalf("op %d: read(%d) at the end = %q, %v, want nothing and a bare io.EOF", i, n, got, err)
				}
			case err != nil || !slices.Equal(got, want[pos:end]):
				t.Fatalf("op %d: read(%d) at %d = %q, %v, want %q, nil", i, n, pos, got, err, want[pos:end])
			}
			for j, d := range isDir {
				if d != dirs[got[j]] {
					t.Fatalf("op %d: entry %q has IsDir %v, want %v", i, got[j], d, dirs[got[j]])
				}
			}
			pos = end
		}
	})
}

// fuzzReadDir reads n entries from the directory h in one of three ways
// (Readdir, Readdirnames, or fs.ReadDirFile's ReadDir) and returns their
// names and, where the way tells, whether each is a directory.
func fuzzReadDir(h afero.File, how byte, n int) (names []string, isDir []bool, err error) {
	switch how {
	case 0:
		infos, err := h.Readdir(n)
		for _, fi := range infos {
			names, isDir = append(names, fi.Name()), append(isDir, fi.IsDir())
		}
		return names, isDir, err
	case 1:
		names, err := h.Readdirnames(n)
		return names, nil, err
	}
	rd, ok := h.(fs.ReadDirFile)
	if !ok {
		return nil, nil, errors.New("the directory handle is not an fs.ReadDirFile")
	}
	entries, err := rd.ReadDir(n)
	for _, e := range entries {
		names, isDir = append(names, e.Name()), append(isDir, e.IsDir())
	}
	return names, isDir, err
}
