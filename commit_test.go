package overlay

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/afero"
)

// ltView returns the merged view of o, flattened, as ltNames lists it.
func ltView(t testing.TB, o *Overlay) []string {
	t.Helper()
	flat := afero.NewMemMapFs()
	if err := Flatten(flat, o); err != nil {
		t.Fatalf("Flatten: %v", err)
	}
	return ltNames(t, flat)
}

func TestCommit(t *testing.T) {
	lower := ltMap(map[string]string{"etc/hosts": "h", "etc/motd": "m", "keep": "k"})
	first := afero.NewMemMapFs()
	o, err := New(first, []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	ltMust(t, afero.WriteFile(o, "etc/hosts", []byte("H"), 0o644))
	ltMust(t, o.Remove("etc/motd"))
	ltMust(t, afero.WriteFile(o, "new", []byte("n"), 0o644))
	before := ltView(t, o)

	second := afero.NewMemMapFs()
	ltMust(t, o.Commit(second))
	if got := ltView(t, o); !slices.Equal(got, before) {
		t.Errorf("after Commit: view = %q, want %q", got, before)
	}
	if got := ltChanges(t, o); len(got) != 0 {
		t.Errorf("after Commit: Changes() = %q, want none", got)
	}
	if ok, _ := newLayer(first).exists(workDir); ok {
		t.Errorf("the committed upper still holds the work directory")
	}
	if ok, _ := newLayer(second).exists(workDir); !ok {
		t.Errorf("the new upper has no work directory")
	}

	ltMust(t, afero.WriteFile(o, "new", []byte("N"), 0o644))
	ltMust(t, o.Remove("keep"))
	if got, want := ltChanges(t, o), []string{"D /keep", "C /new"}; !slices.Equal(got, want) {
		t.Errorf("Changes() = %q, want %q", got, want)
	}
	if got, want := ltNames(t, first), []string{"etc/", "etc/.wh.motd=", "etc/hosts=H", "new=n"}; !slices.Equal(got, want) {
		t.Errorf("committed layer = %q, want %q", got, want)
	}
	want := []string{"etc/", "etc/hosts=H", "new=N"}
	if got := ltView(t, o); !slices.Equal(got, want) {
		t.Errorf("view = %q, want %q", got, want)
	}
}

func TestCommitErrors(t *testing.T) {
	lower := ltMap(map[string]string{"a": "a"})
	upper := afero.NewMemMapFs()
	o, err := New(upper, []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	ro, err := New(nil, []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	busy := ltMem(t, map[string]string{"x": "x"})
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"nil upper", o.Commit(nil), syscall.EINVAL},
		{"not empty", o.Commit(busy), syscall.ENOTEMPTY},
		{"the same upper", o.Commit(upper), syscall.ENOTEMPTY},
		{"read-only", ro.Commit(afero.NewMemMapFs()), syscall.EROFS},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: Commit = %v, want %v", tt.name, tt.err, tt.want)
		}
		var pe *os.PathError
		if !errors.As(tt.err, &pe) || pe.Op != "commit" {
			t.Errorf("%s: Commit = %#v, want a *fs.PathError from commit", tt.name, tt.err)
		}
	}
	if ok, _ := newLayer(upper).exists(workDir); !ok {
		t.Errorf("a failed Commit removed the work directory")
	}
}

// TestCommitKeepsHandles checks that handles opened before a Commit keep
// working after it.
func TestCommitKeepsHandles(t *testing.T) {
	lower := ltMap(map[string]string{"low": "lower data", "d/x": "x"})
	o, err := New(afero.NewMemMapFs(), []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	ltMust(t, afero.WriteFile(o, "up", []byte("upper data"), 0o644))
	low, err := o.Open("low")
	ltMust(t, err)
	up, err := o.Open("up")
	ltMust(t, err)
	dir, err := o.Open("d")
	ltMust(t, err)
	w, err := o.OpenFile("w", os.O_CREATE|os.O_WRONLY, 0o644)
	ltMust(t, err)

	ltMust(t, o.Commit(afero.NewMemMapFs()))
	for name, f := range map[string]afero.File{"low": low, "up": up} {
		b, err := io.ReadAll(f)
		if err != nil || len(b) == 0 {
			t.Errorf("read %s after Commit = %q, %v", name, b, err)
		}
	}
	if names, err := dir.Readdirnames(-1); err != nil || !slices.Equal(names, []string{"x"}) {
		t.Errorf("Readdirnames(d) after Commit = %q, %v", names, err)
	}
	if _, err := w.WriteString("late"); err != nil {
		t.Errorf("write after Commit = %v", err)
	}
	for _, f := range []afero.File{low, up, dir, w} {
		ltMust(t, f.Close())
	}
	if got := ltRead(t, o, "w"); got != "late" {
		t.Errorf("w = %q, want %q", got, "late")
	}
}

// ltRead returns the content of name in fsys.
func ltRead(t testing.TB, fsys afero.Fs, name string) string {
	t.Helper()
	b, err := afero.ReadFile(fsys, name)
	if err != nil {
		t.Fatalf("ReadFile(%q) = %v", name, err)
	}
	return string(b)
}

// TestCommitOnDisk stacks several commits of disk uppers.
func TestCommitOnDisk(t *testing.T) {
	o, err := New(ltDisk(t), []afero.Fs{ltMap(map[string]string{"f": "v0"})})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"v1", "v2", "v3"} {
		ltMust(t, afero.WriteFile(o, "f", []byte(v), 0o644))
		ltMust(t, o.Commit(ltDisk(t)))
	}
	if got := ltRead(t, o, "f"); got != "v3" {
		t.Errorf("f = %q, want %q", got, "v3")
	}
	ltMust(t, o.Remove("f"))
	if got := ltChanges(t, o); !slices.Equal(got, []string{"D /f"}) {
		t.Errorf("Changes() = %q, want [D /f]", got)
	}
	if got := len(o.layers); got != 5 {
		t.Errorf("%d layers, want 5", got)
	}
}

func TestReset(t *testing.T) {
	lower := ltMap(map[string]string{"etc/hosts": "h", "etc/motd": "m", "var/cache/a": "a"})
	upper := afero.NewMemMapFs()
	o, err := New(upper, []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	want := ltView(t, o)
	ltMust(t, afero.WriteFile(o, "etc/hosts", []byte("H"), 0o644))
	ltMust(t, o.Remove("etc/motd"))
	ltMust(t, o.RemoveAll("var/cache"))
	ltMust(t, o.Mkdir("var/cache", 0o700))
	ltMust(t, o.MkdirAll("new/dir", 0o755))
	held, err := o.Open("etc/hosts")
	ltMust(t, err)

	ltMust(t, o.Reset())
	if got := ltView(t, o); !slices.Equal(got, want) {
		t.Errorf("after Reset: view = %q, want %q", got, want)
	}
	if got := ltChanges(t, o); len(got) != 0 {
		t.Errorf("after Reset: Changes() = %q, want none", got)
	}
	if got := ltNames(t, upper); !slices.Equal(got, []string{workDir + "/"}) {
		t.Errorf("after Reset: upper = %q, want only the work directory", got)
	}
	if b, err := io.ReadAll(held); string(b) != "H" || err != nil {
		t.Errorf("read of a handle opened before Reset = %q, %v; want %q", b, err, "H")
	}
	ltMust(t, held.Close())
	ltMust(t, afero.WriteFile(o, "etc/motd", []byte("again"), 0o644))
	if got := ltChanges(t, o); !slices.Equal(got, []string{"C /etc/motd"}) {
		t.Errorf("Changes() = %q, want [C /etc/motd]", got)
	}
}

// TestResetKeepsDiscardedFilesOpen checks that a read handle whose file
// Reset discarded keeps reading that file, as a handle on a deleted file
// does, even after the name is copied up again from the lower; and that a
// handle on a lower file that was never copied up still follows a copy-up
// after Reset.
func TestResetKeepsDiscardedFilesOpen(t *testing.T) {
	tests := []struct {
		name   string
		before func(o *Overlay, r afero.File) error // between Open and Reset
		upper  bool                                 // f is written before the Open
		want   string                               // what r reads after Reset and a write of "third"
	}{
		{"upper file", nil, true, "second"},
		{"lower file, copied up", func(o *Overlay, _ afero.File) error {
			return afero.WriteFile(o, "f", []byte("second"), 0o644)
		}, false, "second"},
		{"lower file, following its copy", func(o *Overlay, r afero.File) error {
			if err := afero.WriteFile(o, "f", []byte("second"), 0o644); err != nil {
				return err
			}
			_, err := r.Stat() // switches r to the copy
			return err
		}, false, "second"},
		{"lower file, never copied up", nil, false, "third"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := New(afero.NewMemMapFs(), []afero.Fs{ltMap(map[string]string{"f": "first"})})
			ltMust(t, err)
			if tt.upper {
				ltMust(t, afero.WriteFile(o, "f", []byte("second"), 0o644))
			}
			r, err := o.Open("f")
			ltMust(t, err)
			defer r.Close()
			if tt.before != nil {
				ltMust(t, tt.before(o, r))
			}
			ltMust(t, o.Reset())
			ltMust(t, afero.WriteFile(o, "f", []byte("third"), 0o644))
			if b, err := io.ReadAll(r); string(b) != tt.want || err != nil {
				t.Errorf("read after Reset and a write = %q, %v; want %q", b, err, tt.want)
			}
		})
	}
}

func TestResetErrors(t *testing.T) {
	ro, err := New(nil, []afero.Fs{ltMap(map[string]string{"a": "a"})})
	if err != nil {
		t.Fatal(err)
	}
	if err := ro.Reset(); !errors.Is(err, syscall.EROFS) {
		t.Errorf("Reset() on a read-only overlay = %v, want EROFS", err)
	}
	upper := afero.NewMemMapFs()
	o, err := New(upper, []afero.Fs{ltMap(map[string]string{"a": "a"})})
	if err != nil {
		t.Fatal(err)
	}
	ltMust(t, upper.RemoveAll("/"+workDir))
	ltMust(t, o.Reset())
	if ok, _ := newLayer(upper).exists(workDir); !ok {
		t.Errorf("Reset did not recreate a missing work directory")
	}
	ltMust(t, o.Remove("a"))
	if got := ltChanges(t, o); !slices.Equal(got, []string{"D /a"}) {
		t.Errorf("Changes() = %q, want [D /a]", got)
	}
}

// TestConcurrentResetChangesExport runs Reset, Changes and ExportLayer
// against writers; run with -race.
func TestConcurrentResetChangesExport(t *testing.T) {
	o, err := New(afero.NewMemMapFs(), []afero.Fs{ltMap(map[string]string{"a": "a", "d/b": "b", "d/c": "c"})})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				name := []string{"a", "d/b", "d/new"}[(i+n)%3]
				_ = afero.WriteFile(o, name, []byte("x"), 0o644)
				_ = o.Remove("d/c")
				_, _ = afero.ReadDir(o, "d")
			}
		})
	}
	for range 50 {
		if err := o.Reset(); err != nil {
			t.Errorf("Reset() = %v", err)
		}
		if _, err := o.Changes(); err != nil {
			t.Errorf("Changes() = %v", err)
		}
		_ = ExportLayer(io.Discard, o) // a file removed meanwhile fails the export; that is allowed
	}
	close(stop)
	wg.Wait()
	ltMust(t, o.Reset())
	if got := ltChanges(t, o); len(got) != 0 {
		t.Errorf("Changes() after the last Reset = %q, want none", got)
	}
}

// TestCommitConcurrent runs Commit against readers and writers under the
// race detector: Commit waits for the calls in progress and holds new ones
// off while it swaps the layers.
func TestCommitConcurrent(t *testing.T) {
	o, err := New(afero.NewMemMapFs(), []afero.Fs{ltMap(map[string]string{"a": "a", "d/b": "b"})})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = afero.ReadFile(o, "a")
				_, _ = afero.ReadDir(o, "d")
				_ = afero.WriteFile(o, "d/b", []byte("x"), 0o644)
			}
		})
	}
	for range 20 {
		if err := o.Commit(afero.NewMemMapFs()); err != nil {
			t.Errorf("Commit() = %v", err)
		}
	}
	close(stop)
	wg.Wait()
}

// TestWriterMovesAcrossCommit checks that a handle open to change its file
// goes on in the new upper after a Commit, at its offset: what it writes
// afterwards shows in the merged view, and to a reader of the file, and the
// committed layer keeps the file as it was at the Commit, times included.
func TestWriterMovesAcrossCommit(t *testing.T) {
	const orig = "0123456789"
	tests := []struct {
		name      string
		lower     bool   // f starts in the lower, else in the upper
		open      string // the name opened
		flag      int
		between   func(o *Overlay) error // after the first write, before Commit
		at        string                 // where the file shows afterwards; "" for nowhere
		committed string                 // what the committed layer holds at at (or at open)
		want      string                 // what the merged view shows at at in the end
	}{
		{"upper file", false, "f", os.O_WRONLY, nil, "f", "abc3456789", "abcdef6789"},
		{"lower file", true, "f", os.O_WRONLY, nil, "f", "abc3456789", "abcdef6789"},
		{"read-write", true, "f", os.O_RDWR, nil, "f", "abc3456789", "abcdef6789"},
		{"append", true, "f", os.O_WRONLY | os.O_APPEND, nil, "f", orig + "abc", orig + "abcdef"},
		{"truncated", true, "f", os.O_WRONLY | os.O_TRUNC, nil, "f", "abc", "abcdef"},
		{"created", false, "n", os.O_WRONLY | os.O_CREATE | os.O_EXCL, nil, "n", "abc", "abcdef"},
		{"renamed", true, "f", os.O_WRONLY, func(o *Overlay) error { return o.Rename("f", "g") }, "g", "abc3456789", "abcdef6789"},
		{"removed", true, "f", os.O_WRONLY, func(o *Overlay) error { return o.Remove("f") }, "", "", ""},
	}
	for _, tt := range tests {
		for kind, upper := range handleTestUppers(t) {
			t.Run(tt.name+"/"+kind, func(t *testing.T) {
				lower := timedLayer(map[string]string{"f": orig}, nil)
				first := upper()
				o, err := New(first, []afero.Fs{lower})
				ltMust(t, err)
				if !tt.lower {
					ltMust(t, afero.WriteFile(o, "f", []byte(orig), 0o644))
				}
				w, err := o.OpenFile(tt.open, tt.flag, 0o644)
				ltMust(t, err)
				_, err = w.Write([]byte("abc"))
				ltMust(t, err)
				if tt.between != nil {
					ltMust(t, tt.between(o))
				}
				var r afero.File
				if tt.at != "" {
					r, err = o.Open(tt.at)
					ltMust(t, err)
					defer r.Close()
				}
				second := upper()
				ltMust(t, o.Commit(second))
				committed := newLayer(first)
				var mtime time.Time
				if tt.at != "" {
					fi, err := committed.lstat(tt.at)
					ltMust(t, err)
					mtime = fi.ModTime()
				}
				_, err = w.Write([]byte("def"))
				ltMust(t, err)
				ltMust(t, w.Close())

				checkFileIs(t, "merged view", o, tt.at, tt.want)
				checkFileIs(t, "committed layer", first, tt.at, tt.committed)
				if tt.at != "" {
					if fi, err := committed.lstat(tt.at); err != nil || !fi.ModTime().Equal(mtime) {
						t.Errorf("the committed file's mtime changed: %v, want %v (err %v)", fi.ModTime(), mtime, err)
					}
					got, err := io.ReadAll(r)
					if err != nil || string(got) != tt.want {
						t.Errorf("a reader opened before the Commit reads %q, %v, want %q", got, err, tt.want)
					}
				} else if _, err := o.Stat(tt.open); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("Stat(%q) after removal = %v, want ENOENT", tt.open, err)
				}
			})
		}
	}
}

// checkFileIs checks that fsys holds name with content want, or, with name
// empty, nothing to check.
func checkFileIs(t *testing.T, what string, fsys afero.Fs, name, want string) {
	t.Helper()
	if name == "" {
		return
	}
	got, err := afero.ReadFile(fsys, "/"+name) // a MemMapFs layer's form of the name
	if err != nil || string(got) != want {
		t.Errorf("%s: %s holds %q, %v, want %q", what, name, got, err, want)
	}
}

// TestCommitBetweenWrites checks that a Commit racing a handle's writes
// moves the handle between two of them: every byte written lands once, in
// the merged view, and each committed layer holds a prefix of what was
// written by its Commit.
func TestCommitBetweenWrites(t *testing.T) {
	const writes, commits = 2000, 5
	uppers := []afero.Fs{afero.NewMemMapFs()}
	o, err := New(uppers[0], []afero.Fs{afero.NewMemMapFs()})
	ltMust(t, err)
	w, err := o.Create("f")
	ltMust(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range writes {
			if _, err := w.Write([]byte{byte('a' + i%26)}); err != nil {
				t.Errorf("write %d: %v", i, err)
				return
			}
		}
	}()
	for range commits {
		fresh := afero.NewMemMapFs()
		ltMust(t, o.Commit(fresh))
		uppers = append(uppers, fresh)
	}
	wg.Wait()
	ltMust(t, w.Close())
	want := make([]byte, writes)
	for i := range want {
		want[i] = byte('a' + i%26)
	}
	got, err := afero.ReadFile(o, "f")
	if err != nil || string(got) != string(want) {
		t.Fatalf("merged view: f holds %d bytes, %v; want the %d written", len(got), err, writes)
	}
	last := 0
	for i, up := range uppers[:commits] {
		got, err := afero.ReadFile(up, "/f")
		if err != nil || len(got) < last || string(got) != string(want[:len(got)]) {
			t.Errorf("committed layer %d: f holds %q, %v; want a prefix of what was written, at least %d bytes", i, got, err, last)
		}
		last = len(got)
	}
}
