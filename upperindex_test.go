package overlay

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"testing"

	"github.com/spf13/afero"
)

// Every test runs with the upper index checked: each answer it gives a
// lookup is compared with what asking the upper itself gives.
func init() { checkIndexed = verifyIndexed }

// verifyIndexed panics if the upper index's answer for p, a child of
// parent, differs from the upper's own. A failing upper (the fault tests)
// leaves nothing to compare.
func verifyIndexed(o *Overlay, parent entry, p string, got entry, found bool) {
	want, wantFound, err := o.probedChild(parent, p)
	if err != nil {
		return
	}
	same := found == wantFound && got.whiteout == want.whiteout
	if same && found {
		same = got.path == want.path && got.layer == want.layer &&
			kindOf(got.info) == kindOf(want.info) && slices.Equal(got.dirs, want.dirs)
	}
	if !same {
		panic(fmt.Sprintf("upper index: %q: got found=%v %+v, the upper says found=%v %+v", p, found, got, wantFound, want))
	}
}

// Every answer of the lookup cache is checked against a fresh walk.
func init() { checkCached = verifyCached }

// verifyCached panics if the lookup cache's answer for name differs from a
// fresh walk's. The caller holds o.mu for reading.
func verifyCached(o *Overlay, name string, follow bool, got entry, found bool) {
	r, err := o.walk(name, follow)
	if err != nil {
		return
	}
	same := found == r.found && got.whiteout == r.whiteout
	if same && found {
		same = got.path == r.path && got.layer == r.layer && got.lpath == r.lpath &&
			kindOf(got.info) == kindOf(r.info) && slices.Equal(got.dirs, r.dirs)
	}
	if !same {
		panic(fmt.Sprintf("lookup cache: %q (follow %v): got found=%v %+v, a walk gives found=%v %+v", name, follow, found, got, r.found, r.entry))
	}
}

func TestDirNamesSet(t *testing.T) {
	tests := []struct {
		name       string
		kind       nameKind
		look       string
		want       nameKind
		wantOpaque bool
	}{
		{"file", kindFile, "file", kindFile, false},
		{"dir", kindDir, "dir", kindDir, false},
		{"link", kindSymlink, "link", kindSymlink, false},
		{whiteoutPrefix + "gone", kindFile, "gone", kindWhiteout, false},
		{whiteoutPrefix + "gone", kindDir, "gone", kindWhiteout, false}, // any type of marker hides
		{opaqueMarker, kindFile, opaqueMarker, 0, true},
		{workDir, kindDir, workDir, kindDir, false}, // internal: a plain name, hides nothing
		{workDir, kindDir, "work", 0, false},
	}
	for _, tt := range tests {
		var d dirNames
		d.set(tt.name, tt.kind)
		if got := d.lookup(tt.look); got != tt.want {
			t.Errorf("set(%q, %v): lookup(%q) = %v, want %v", tt.name, tt.kind, tt.look, got, tt.want)
		}
		if d.opaque.Load() != tt.wantOpaque {
			t.Errorf("set(%q, %v): opaque = %v, want %v", tt.name, tt.kind, d.opaque.Load(), tt.wantOpaque)
		}
	}
}

func TestDirNamesNameAndWhiteoutTogether(t *testing.T) {
	var d dirNames
	d.set("x", kindFile)
	d.set(whiteoutPrefix+"x", kindFile)
	if got := d.lookup("x"); got != kindFile|kindWhiteout {
		t.Fatalf("name and marker: %v, want file|whiteout", got)
	}
	d.set("x", 0)
	if got := d.lookup("x"); got != kindWhiteout {
		t.Fatalf("name removed: %v, want whiteout only", got)
	}
	d.set(whiteoutPrefix+"x", 0)
	if _, ok := d.names["x"]; ok {
		t.Fatal("both removed: the name is still in the map")
	}
	d.set(opaqueMarker, kindFile)
	d.set(opaqueMarker, 0)
	if d.opaque.Load() {
		t.Fatal("opaque marker removed: still opaque")
	}
}

// TestUpperIndexForgetsTrees checks the rule forgetTree relies on: a
// listing is only kept while its parent's is.
func TestUpperIndexForgetsTrees(t *testing.T) {
	up := newLayer(afero.NewMemMapFs())
	up.names = new(upperIndex)
	for _, d := range []string{"a", "a/b", "a/b/c", "ab"} {
		if err := up.mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	x := up.names
	for _, d := range []string{".", "a", "a/b", "a/b/c", "ab"} {
		if _, err := x.listing(up, d); err != nil {
			t.Fatal(err)
		}
	}
	x.forgetTree("a")
	for d, want := range map[string]bool{".": true, "a": false, "a/b": false, "a/b/c": false, "ab": true} {
		if got := x.loaded(d) != nil; got != want {
			t.Errorf("after forgetting a: %q kept = %v, want %v", d, got, want)
		}
	}
	if _, err := x.listing(up, "a/b"); err != nil {
		t.Fatal(err)
	}
	if x.loaded("a/b") != nil {
		t.Error("a/b was kept although a is not")
	}
	x.unsure("ab/file")
	if x.loaded("ab") != nil || x.loaded(".") == nil {
		t.Error("unsure(ab/file) should forget ab and only ab")
	}
}

// TestUpperIndexFollowsChanges checks the index through the layer methods
// that change names: after each, it agrees with a fresh listing.
func TestUpperIndexFollowsChanges(t *testing.T) {
	fsys := afero.NewMemMapFs()
	up := newLayer(fsys)
	up.names = new(upperIndex)
	steps := []struct {
		what string
		do   func() error
	}{
		{"mkdir d", func() error { return up.mkdir("d", 0o755) }},
		{"create d/f", func() error { return closeOpened(up.open("d/f", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)) }},
		{"whiteout d/w", func() error { return up.addWhiteout("d/w") }},
		{"opaque d", func() error { return up.markOpaque("d") }},
		{"rename d/f d/g", func() error { return up.rename("d/f", "d/g") }},
		{"mkdir d/sub", func() error { return up.mkdir("d/sub", 0o755) }},
		{"rename d/sub e", func() error { return up.rename("d/sub", "e") }},
		{"drop whiteout", func() error { return up.dropWhiteout("d/w") }},
		{"remove d/g", func() error { return up.remove("d/g") }},
		{"removeAll d", func() error { return up.removeAll("d") }},
		{"remove missing", func() error { _ = up.remove("nothing"); return nil }},
	}
	for _, d := range []string{"."} {
		if _, err := up.names.listing(up, d); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		for _, dir := range []string{".", "d", "e"} {
			if _, err := up.lstat(dir); err != nil {
				continue
			}
			d, err := up.names.listing(up, dir)
			if err != nil {
				t.Fatalf("%s: listing %q: %v", s.what, dir, err)
			}
			fresh, err := new(upperIndex).listing(up, dir)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := dumpNames(d), dumpNames(fresh); got != want {
				t.Errorf("after %s: index of %q = %s, the upper holds %s", s.what, dir, got, want)
			}
		}
	}
}

// closeOpened closes the file an open returned.
func closeOpened(f afero.File, err error) error {
	if err != nil {
		return err
	}
	return f.Close()
}

// dumpNames renders d for comparison.
func dumpNames(d *dirNames) string {
	var names []string
	for k, v := range d.names {
		names = append(names, fmt.Sprintf("%s=%d", k, v))
	}
	slices.Sort(names)
	return fmt.Sprintf("opaque=%v %v", d.opaque.Load(), names)
}

// TestUpperIndexCheckCatchesDrift shows the checker the other tests run
// under can fail: a whiteout put into the upper behind the overlay's back
// (which the contract forbids) is caught at the next lookup.
func TestUpperIndexCheckCatchesDrift(t *testing.T) {
	lower := afero.NewMemMapFs()
	if err := afero.WriteFile(lower, "/f", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	o, upper := newOverlay(t, lower)
	if _, err := o.Stat("f"); err != nil {
		t.Fatal(err)
	}
	if err := afero.WriteFile(upper, "/"+whiteoutPrefix+"f", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	o.lookups.clear() // else the cached walk answers without a lookup
	defer func() {
		if recover() == nil {
			t.Error("a lookup after the upper changed underneath did not panic")
		}
	}()
	_, _ = o.Stat("f")
}

// TestLookupCacheForgetsOnChange checks that cached walks go with a change
// of the upper's names, and that the cache holds only the current
// generation's walks.
func TestLookupCacheForgetsOnChange(t *testing.T) {
	lower := afero.NewMemMapFs()
	if err := afero.WriteFile(lower, "/d/f", []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	o, _ := newOverlay(t, lower)
	stat := func(want error) {
		t.Helper()
		if _, err := o.Stat("d/f"); !errors.Is(err, want) && !(want == nil && err == nil) {
			t.Fatalf("Stat(d/f) = %v, want %v", err, want)
		}
	}
	stat(nil)
	stat(nil) // from the cache
	if _, ok := o.lookups.follow.Load("d/f"); !ok {
		t.Fatal("Stat did not remember its walk")
	}
	if err := o.Remove("d/f"); err != nil {
		t.Fatal(err)
	}
	stat(fs.ErrNotExist)
	if err := afero.WriteFile(o, "d/f", []byte("upper"), 0o600); err != nil {
		t.Fatal(err)
	}
	stat(nil)
	fi, err := o.Stat("d/f")
	if err != nil || fi.Size() != 5 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("Stat(d/f) = %v, %v; want the upper's 5-byte 0600 file", fi, err)
	}
	if err := o.Chmod("d/f", 0o640); err != nil { // no change of names: the walk stays, the FileInfo is fresh
		t.Fatal(err)
	}
	if fi, err := o.Stat("d/f"); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("after Chmod: Stat(d/f) = %v, %v; want mode 0640", fi, err)
	}
	n := 0
	o.lookups.follow.Range(func(any, any) bool { n++; return true })
	o.lookups.lstat.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Fatalf("the cache holds %d walks, want only the current one", n)
	}
}

// Every lock-free answer of the lookup cache is checked against a fresh
// walk too, unless the upper changed since.
func init() { checkFrozen = verifyFrozen }

// verifyFrozen panics if a lock-free answer of the lookup cache, made at
// generation gen of upper, differs from a fresh walk's at the same
// generation.
func verifyFrozen(o *Overlay, name string, follow bool, upper *upperIndex, gen uint64, got entry, found bool) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.lookups.upper.Load() != upper || upper.generation() != gen {
		return // changed since: the answer was right before the change
	}
	verifyCached(o, name, follow, got, found)
}

// TestRefreshAfterChangesUnderneath changes both layers behind the
// overlay's back, which the contract forbids while it is in use, and
// checks that Refresh makes the overlay show them, the checkers agreeing.
func TestRefreshAfterChangesUnderneath(t *testing.T) {
	lower := afero.NewMemMapFs()
	for _, name := range []string{"/d/f", "/d/g"} {
		if err := afero.WriteFile(lower, name, []byte("lower"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o, upper := newOverlay(t, lower)
	for _, name := range []string{"d/f", "d/g", "d/new"} {
		_, _ = o.Stat(name) // remembered: found, found, absent
	}
	if _, err := o.Open("d"); err != nil { // lists nothing yet, but indexes d
		t.Fatal(err)
	}
	// Behind the overlay's back: whiteout d/f in the upper, add d/new to
	// the lower.
	if err := upper.MkdirAll("/d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := afero.WriteFile(upper, "/d/"+whiteoutPrefix+"f", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := afero.WriteFile(lower, "/d/new", []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := o.Refresh(); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"d/f": false, "d/g": true, "d/new": true} {
		_, err := o.Stat(name)
		if got := err == nil; got != want {
			t.Errorf("after Refresh: Stat(%s) = %v, want found=%v", name, err, want)
		}
	}
	names, err := afero.ReadDir(o, "d")
	if err != nil || len(names) != 2 || names[0].Name() != "g" || names[1].Name() != "new" {
		t.Fatalf("after Refresh: ReadDir(d) = %v, %v; want g, new", names, err)
	}
}

func TestLookupCacheIsBounded(t *testing.T) {
	o, _ := newOverlay(t, afero.NewMemMapFs())
	for i := range maxCachedWalks + 100 {
		_, _ = o.Stat(fmt.Sprintf("missing%d", i))
	}
	n := 0
	o.lookups.follow.Range(func(any, any) bool { n++; return true })
	if n == 0 || n > maxCachedWalks {
		t.Fatalf("the cache holds %d walks, want between 1 and %d", n, maxCachedWalks)
	}
}
