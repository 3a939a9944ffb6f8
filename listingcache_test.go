package overlay

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/afero"
)

// Every listing the cache gives, in every test, is checked against a fresh
// read, unless a change was under way or made meanwhile.
func init() { checkListing = verifyListing }

// verifyListing panics if a remembered listing, read at count changes,
// differs from a fresh read of the directory e while nothing changes the
// upper. The caller holds o.mu for reading, so no name changes.
func verifyListing(o *Overlay, e entry, changes uint64, got []fs.FileInfo) {
	fresh, err := o.readMerged(e)
	if err != nil || changing.Load() != 0 || o.listings.changes.Load() != changes {
		return // a change under way or made since: either listing may be right
	}
	if d := listingDiff(got, fresh); d != "" {
		panic(fmt.Sprintf("listing cache: %q: %s", e.path, d))
	}
}

// listingDiff describes the first difference between two listings, "" if
// they show the same entries with the same FileInfo fields.
func listingDiff(got, want []fs.FileInfo) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%d entries, a fresh read gives %d", len(got), len(want))
	}
	for i, g := range got {
		w := want[i]
		if g.Name() != w.Name() || g.Size() != w.Size() || g.Mode() != w.Mode() || !g.ModTime().Equal(w.ModTime()) || g.IsDir() != w.IsDir() {
			return fmt.Sprintf("entry %d is %s, a fresh read gives %s", i, describe(g), describe(w))
		}
	}
	return ""
}

// describe formats a FileInfo's fields for a test failure.
func describe(fi fs.FileInfo) string {
	return fmt.Sprintf("%s (%d bytes, %v, %s)", fi.Name(), fi.Size(), fi.Mode(), fi.ModTime().Format(time.RFC3339Nano))
}

// TestListingCache checks, rule by rule, that a remembered listing of a
// merged directory gives way to each kind of change of the upper, names or
// not, and that what a listing returns is the caller's to change.
func TestListingCache(t *testing.T) {
	tests := []struct {
		name   string
		change func(o *Overlay) error
	}{
		{"write through a handle open before the listing", nil}, // see below
		{"write through a new handle", func(o *Overlay) error {
			return afero.WriteFile(o, "d/up", []byte("longer content"), 0o644)
		}},
		{"WriteAt", func(o *Overlay) error {
			return withFile(o, "d/up", func(f afero.File) error { _, err := f.WriteAt([]byte("x"), 99); return err })
		}},
		{"Truncate", func(o *Overlay) error { return withFile(o, "d/up", func(f afero.File) error { return f.Truncate(1) }) }},
		{"Chmod", func(o *Overlay) error { return o.Chmod("d/up", 0o600) }},
		{"Chtimes", func(o *Overlay) error {
			return o.Chtimes("d/up", time.Unix(1, 0), time.Unix(2, 0))
		}},
		{"Chmod of a lower file (copy-up)", func(o *Overlay) error { return o.Chmod("d/low", 0o600) }},
		{"write to a lower file (copy-up)", func(o *Overlay) error {
			return withFile(o, "d/low", func(f afero.File) error { _, err := f.Write([]byte("more")); return err })
		}},
		{"Create", func(o *Overlay) error { return afero.WriteFile(o, "d/new", nil, 0o644) }},
		{"Remove of an upper file", func(o *Overlay) error { return o.Remove("d/up") }},
		{"Remove of a lower file", func(o *Overlay) error { return o.Remove("d/low") }},
		{"Rename", func(o *Overlay) error { return o.Rename("d/low", "d/moved") }},
		{"Mkdir in it (its mtime)", func(o *Overlay) error { return o.Mkdir("d/sub/inner", 0o755) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lower := afero.NewMemMapFs()
			if err := afero.WriteFile(lower, "/d/low", []byte("lower"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := lower.Mkdir("/d/sub", 0o755); err != nil {
				t.Fatal(err)
			}
			o, _ := newOverlay(t, lower)
			if err := afero.WriteFile(o, "d/up", []byte("upper"), 0o644); err != nil {
				t.Fatal(err)
			}
			open, err := o.OpenFile("d/up", os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer open.Close()
			first := listAll(t, o, "d")
			first[0] = nil // the caller's to change
			if _, ok := o.listings.dirs.Load("d"); !ok {
				t.Fatal("the listing was not remembered")
			}
			if again := listAll(t, o, "d"); again[0] == nil {
				t.Fatal("a listing shares its slice with the cache")
			}
			change := tt.change
			if change == nil {
				change = func(*Overlay) error { _, err := open.Write([]byte(" and more")); return err }
			}
			time.Sleep(2 * time.Millisecond) // so that a new mtime differs
			if err := change(o); err != nil {
				t.Fatal(err)
			}
			got := listAll(t, o, "d")
			want, err := o.readMerged(mustLookup(t, o, "d"))
			if err != nil {
				t.Fatal(err)
			}
			if d := listingDiff(got, want); d != "" {
				t.Fatalf("after the change: %s", d)
			}
		})
	}
}

// TestListingCacheOff checks that listings are read afresh where the
// cache cannot see every change: a directory on the host as the upper,
// whose FileInfos carry access times.
func TestListingCacheOff(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "upper", "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	o, err := New(afero.NewBasePathFs(afero.NewOsFs(), filepath.Join(dir, "upper")), nil)
	if err != nil {
		t.Fatal(err)
	}
	listAll(t, o, "d")
	if _, ok := o.listings.dirs.Load("d"); ok {
		t.Fatal("a host upper's listing was remembered")
	}
}

// withFile opens name in o for writing, runs fn on it and closes it.
func withFile(o *Overlay, name string, fn func(f afero.File) error) error {
	f, err := o.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = fn(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// listAll lists the directory name of o whole.
func listAll(t *testing.T, o *Overlay, name string) []fs.FileInfo {
	t.Helper()
	f, err := o.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	list, err := f.Readdir(-1)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// mustLookup returns the entry at name.
func mustLookup(t *testing.T, o *Overlay, name string) entry {
	t.Helper()
	o.mu.RLock()
	defer o.mu.RUnlock()
	r, err := o.walk(name, false)
	if err != nil || !r.found {
		t.Fatalf("walk(%s) = %v, found %v", name, err, r.found)
	}
	return r.entry
}
