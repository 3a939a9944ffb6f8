package overlay

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/afero"
)

// ltNode is what the tree helpers compare of one name.
type ltNode struct {
	mode  fs.FileMode
	mtime int64 // whole seconds: layer tars keep no more
	data  string
	link  string
}

// ltWalk returns every name beneath the root of fsys (markers and the work
// directory included, as they are), by unrooted name.
func ltWalk(fsys afero.Fs) (map[string]ltNode, error) {
	l := newLayer(fsys)
	out := make(map[string]ltNode)
	var walk func(dir string) error
	walk = func(dir string) error {
		list, err := l.readDir(dir)
		if err != nil {
			return err
		}
		for _, fi := range list {
			p := join(dir, fi.Name())
			n := ltNode{mode: fi.Mode(), mtime: fi.ModTime().Unix()}
			switch {
			case fi.IsDir():
				if err := walk(p); err != nil {
					return err
				}
			case fi.Mode()&fs.ModeSymlink != 0:
				if n.link, err = l.readlink(p); err != nil {
					return err
				}
			default:
				b, err := afero.ReadFile(fsys, l.path(p))
				if err != nil {
					return err
				}
				n.data = string(b)
			}
			out[p] = n
		}
		return nil
	}
	return out, walk(".")
}

// ltNames lists the tree of fsys in name order as "dir/", "file=content"
// and "link->target", for table tests.
func ltNames(t testing.TB, fsys afero.Fs) []string {
	t.Helper()
	tree, err := ltWalk(fsys)
	if err != nil {
		t.Fatalf("walk: %v", err)
	}
	var out []string
	for p, n := range tree {
		switch {
		case n.mode.IsDir():
			out = append(out, p+"/")
		case n.mode&fs.ModeSymlink != 0:
			out = append(out, p+"->"+n.link)
		default:
			out = append(out, p+"="+n.data)
		}
	}
	slices.Sort(out)
	return out
}

// ltDiff returns every difference between the trees of want and got (types,
// modes, content, targets and, with times set, mtimes in whole seconds),
// joined.
func ltDiff(want, got afero.Fs, times bool) error {
	w, err := ltWalk(want)
	if err != nil {
		return fmt.Errorf("walk want: %w", err)
	}
	g, err := ltWalk(got)
	if err != nil {
		return fmt.Errorf("walk got: %w", err)
	}
	var errs []error
	for _, p := range ltKeys(w, g) {
		wn, wok := w[p]
		gn, gok := g[p]
		switch {
		case !gok:
			errs = append(errs, fmt.Errorf("%s: missing", p))
		case !wok:
			errs = append(errs, fmt.Errorf("%s: unexpected %v", p, gn.mode))
		default:
			if !times {
				wn.mtime, gn.mtime = 0, 0
			}
			if wn != gn {
				errs = append(errs, fmt.Errorf("%s: got %+v, want %+v", p, gn, wn))
			}
		}
	}
	return errors.Join(errs...)
}

// ltKeys returns the names of both trees, sorted.
func ltKeys(a, b map[string]ltNode) []string {
	var keys []string
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// ltMem returns a MemMapFs holding files: names ending in "/" are
// directories, the others files with the given content.
func ltMem(t testing.TB, files map[string]string) afero.Fs {
	t.Helper()
	m := afero.NewMemMapFs()
	ltFill(t, m, files)
	return m
}

// ltFill writes files into fsys, as ltMem describes them.
func ltFill(t testing.TB, fsys afero.Fs, files map[string]string) {
	t.Helper()
	l := newLayer(fsys)
	for name, data := range files {
		var err error
		if dir, ok := strings.CutSuffix(name, "/"); ok {
			err = fsys.MkdirAll(l.path(dir), 0o755)
		} else {
			if err = fsys.MkdirAll(l.path(parentOf(name)), 0o755); err == nil {
				err = afero.WriteFile(fsys, l.path(name), []byte(data), 0o644)
			}
		}
		if err != nil {
			t.Fatalf("fill %s: %v", name, err)
		}
	}
}

// ltDisk returns a BasePathFs over a new temporary directory.
func ltDisk(t testing.TB) afero.Fs {
	t.Helper()
	return afero.NewBasePathFs(afero.NewOsFs(), t.TempDir())
}

func TestFlatten(t *testing.T) {
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	lower := ltMem(t, map[string]string{"etc/hosts": "h", "etc/motd": "m", "bin/sh": "sh", "var/cache/x": "x"})
	if err := lower.Chmod("/bin/sh", 0o755|fs.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if err := lower.Chtimes("/etc/hosts", old, old); err != nil {
		t.Fatal(err)
	}
	o, err := New(afero.NewMemMapFs(), []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	ltMust(t, o.Remove("etc/motd"))
	ltMust(t, o.RemoveAll("var/cache"))
	ltMust(t, o.Mkdir("var/cache", 0o700))
	ltMust(t, afero.WriteFile(o, "var/cache/y", []byte("y"), 0o600))

	dst := afero.NewMemMapFs()
	ltMust(t, Flatten(dst, o))
	want := []string{"bin/", "bin/sh=sh", "etc/", "etc/hosts=h", "var/", "var/cache/", "var/cache/y=y"}
	if got := ltNames(t, dst); !slices.Equal(got, want) {
		t.Errorf("Flatten = %q, want %q", got, want)
	}
	checks := []struct {
		name  string
		mode  fs.FileMode
		mtime time.Time
	}{
		{"/bin/sh", 0o755 | fs.ModeSetuid, time.Time{}},
		{"/etc/hosts", 0o644, old},
		{"/var/cache", fs.ModeDir | 0o700, time.Time{}},
		{"/var/cache/y", 0o600, time.Time{}},
	}
	for _, c := range checks {
		fi, err := dst.Stat(c.name)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != c.mode {
			t.Errorf("Stat(%q).Mode() = %v, want %v", c.name, fi.Mode(), c.mode)
		}
		if !c.mtime.IsZero() && !fi.ModTime().Equal(c.mtime) {
			t.Errorf("Stat(%q).ModTime() = %v, want %v", c.name, fi.ModTime(), c.mtime)
		}
	}
}

// TestFlattenKeepsDirTimes checks that a directory's mtime is set after its
// children are written.
func TestFlattenKeepsDirTimes(t *testing.T) {
	old := time.Date(2021, 6, 1, 0, 0, 0, 0, time.UTC)
	src := ltDisk(t)
	ltFill(t, src, map[string]string{"d/a": "a", "d/b": "b"})
	ltMust(t, src.Chtimes("/d", old, old))
	o, err := New(nil, []afero.Fs{src})
	if err != nil {
		t.Fatal(err)
	}
	dst := ltDisk(t)
	ltMust(t, Flatten(dst, o))
	fi, err := dst.Stat("/d")
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(old) {
		t.Errorf("Stat(d).ModTime() = %v, want %v", fi.ModTime(), old)
	}
}

func TestFlattenSymlinks(t *testing.T) {
	src := ltDisk(t)
	ltFill(t, src, map[string]string{"usr/lib/libc": "c"})
	ltMust(t, ltSymlink(src, "usr/lib", "lib"))
	ltMust(t, ltSymlink(src, "/etc/passwd", "abs"))
	o, err := New(nil, []afero.Fs{src})
	if err != nil {
		t.Fatal(err)
	}

	dst := ltDisk(t)
	ltMust(t, Flatten(dst, o))
	want := []string{"abs->/etc/passwd", "lib->usr/lib", "usr/", "usr/lib/", "usr/lib/libc=c"}
	if got := ltNames(t, dst); !slices.Equal(got, want) {
		t.Errorf("Flatten = %q, want %q", got, want)
	}

	err = Flatten(afero.NewMemMapFs(), o)
	if !errors.Is(err, afero.ErrNoSymlink) {
		t.Errorf("Flatten(MemMapFs) = %v, want an error matching afero.ErrNoSymlink", err)
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Path != "abs" {
		t.Errorf("Flatten(MemMapFs) = %#v, want a *fs.PathError for %q", err, "abs")
	}
}

// ltSymlink creates the symlink name → target in the disk layer fsys,
// verbatim.
func ltSymlink(fsys afero.Fs, target, name string) error {
	p, err := fsys.(*afero.BasePathFs).RealPath(name)
	if err != nil {
		return err
	}
	return os.Symlink(target, filepath.Clean(p))
}

// ltMust fails the test on an error.
func ltMust(t harnessTB, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%v", err)
	}
}
