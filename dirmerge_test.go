package overlay

import (
	"io"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"testing"
	"testing/fstest"
	"time"

	"github.com/spf13/afero"
	"pgregory.net/rapid"
)

// info is a FileInfo for mergeDir tests.
type info struct {
	name string
	dir  bool
}

func (i info) Name() string { return i.name }
func (i info) Size() int64  { return 0 }
func (i info) Mode() fs.FileMode {
	if i.dir {
		return fs.ModeDir | 0o755
	}
	return 0o644
}
func (i info) ModTime() time.Time { return time.Time{} }
func (i info) IsDir() bool        { return i.dir }
func (i info) Sys() any           { return nil }

// listing builds a layer's listing; a trailing "/" marks a directory.
func listing(names ...string) []fs.FileInfo {
	var list []fs.FileInfo
	for _, n := range names {
		if d, ok := cutSuffix(n, "/"); ok {
			list = append(list, info{d, true})
			continue
		}
		list = append(list, info{n, false})
	}
	return list
}

func cutSuffix(s, suffix string) (string, bool) {
	if len(s) > 0 && s[len(s)-1:] == suffix {
		return s[:len(s)-1], true
	}
	return s, false
}

func TestMergeDir(t *testing.T) {
	tests := []struct {
		name     string
		listings [][]fs.FileInfo
		want     []string // names; a trailing "/" marks a directory
	}{
		{"union sorted", [][]fs.FileInfo{listing("b", "a"), listing("c", "a")}, []string{"a", "b", "c"}},
		{"upper wins on type", [][]fs.FileInfo{listing("x"), listing("x/")}, []string{"x"}},
		{"dir over file", [][]fs.FileInfo{listing("x/"), listing("x")}, []string{"x/"}},
		{"whiteout hides below", [][]fs.FileInfo{listing(".wh.a", "b"), listing("a", "c")}, []string{"b", "c"}},
		{"whiteout does not hide its own layer", [][]fs.FileInfo{listing(".wh.a", "a"), listing("a/")}, []string{"a"}},
		{"whiteout in middle layer", [][]fs.FileInfo{listing("z"), listing(".wh.a"), listing("a")}, []string{"z"}},
		{"upper copy above a middle whiteout", [][]fs.FileInfo{listing("a/"), listing(".wh.a"), listing("a")}, []string{"a/"}},
		{"markers and work dir never shown", [][]fs.FileInfo{listing(opaqueMarker, workDir+"/", "k")}, []string{"k"}},
		{"one listing sorted", [][]fs.FileInfo{listing("c", ".wh.a", "b/", "a")}, []string{"a", "b/", "c"}},
		{"one listing of markers only", [][]fs.FileInfo{listing(".wh.a", opaqueMarker)}, nil},
		{"empty", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, fi := range mergeDir(tt.listings) {
				n := fi.Name()
				if fi.IsDir() {
					n += "/"
				}
				got = append(got, n)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("mergeDir = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestReaddirPaging checks the os.File contract for Readdir(n).
func TestReaddirPaging(t *testing.T) {
	files := fstest.MapFS{}
	var want []string
	for _, n := range []string{"e", "a", "d", "c", "b"} {
		files["d/"+n] = mapFile(n)
		want = append(want, n)
	}
	slices.Sort(want)
	o, _ := newOverlay(t, mapLayer(files))
	opens := []func() (afero.File, error){
		func() (afero.File, error) { return o.Open("d") },
		func() (afero.File, error) { return o.OpenFile("/d/", os.O_RDONLY, 0) },
	}
	for _, open := range opens {
		f, err := open()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			page, err := f.Readdirnames(2)
			if len(page) > 2 {
				t.Fatalf("Readdirnames(2) returned %d names", len(page))
			}
			got = append(got, page...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("Readdirnames(2): %v", err)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("paged names = %q, want %q", got, want)
		}
		rest, err := f.Readdir(-1)
		if err != nil || len(rest) != 0 || rest == nil {
			t.Errorf("Readdir(-1) at the end = %v, %v, want an empty slice and nil", rest, err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		all, err := f.Readdirnames(0)
		if err != nil || !reflect.DeepEqual(all, want) {
			t.Errorf("Readdirnames(0) after rewind = %q, %v, want %q", all, err, want)
		}
		f.Close()
	}
}

// TestFSConformance runs io/fs's conformance test over a three-layer
// overlay with whiteouts, an opaque directory and upper changes.
func TestFSConformance(t *testing.T) {
	l1 := mapLayer(fstest.MapFS{
		"etc/hosts":           mapFile("l1 hosts"),
		"etc/.wh.passwd":      mapFile(""),
		"opt/" + opaqueMarker: mapFile(""),
		"opt/app/bin":         mapFile("bin"),
		"var/lib/db":          mapFile("db"),
	})
	l2 := mapLayer(fstest.MapFS{
		"etc/hosts":   mapFile("l2 hosts"),
		"etc/passwd":  mapFile("root"),
		"etc/group":   mapFile("wheel"),
		"opt/old/lib": mapFile("hidden"),
		"usr/bin/sh":  mapFile("sh"),
	})
	o, _ := newOverlay(t, l1, l2)
	if err := afero.WriteFile(o, "etc/motd", []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := o.Remove("usr/bin/sh"); err != nil {
		t.Fatal(err)
	}
	if err := o.MkdirAll("home/user", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := fstest.TestFS(afero.NewIOFS(o), "etc/hosts", "etc/group", "etc/motd", "opt/app/bin", "var/lib/db", "usr/bin", "home/user"); err != nil {
		t.Fatal(err)
	}
	for _, hidden := range []string{"etc/passwd", "opt/old", "usr/bin/sh"} {
		if _, err := o.Stat(hidden); err == nil {
			t.Errorf("Stat(%q) = nil error, want it hidden", hidden)
		}
	}
}

func TestMergeSorted(t *testing.T) {
	tests := []struct {
		name         string
		upper, lower []fs.FileInfo
		hidden       []string
		want         []string
	}{
		{"interleaved", listing("b", "d"), listing("a", "c", "e"), nil, []string{"a", "b", "c", "d", "e"}},
		{"upper wins", listing("b/"), listing("a", "b", "c"), nil, []string{"a", "b/", "c"}},
		{"hidden lower names", listing("z"), listing("a", "b", "c"), []string{"a", "c"}, []string{"b", "z"}},
		{"hidden but recreated above", listing("a"), listing("a/"), []string{"a"}, []string{"a"}},
		{"upper only", listing("x", "y"), nil, nil, []string{"x", "y"}},
		{"lower only", nil, listing("x", "y"), []string{"q"}, []string{"x", "y"}},
	}
	for _, tt := range tests {
		var got []string
		for _, fi := range mergeSorted(tt.upper, tt.lower, tt.hidden) {
			n := fi.Name()
			if fi.IsDir() {
				n += "/"
			}
			got = append(got, n)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: mergeSorted = %q, want %q", tt.name, got, tt.want)
		}
	}
}

// TestMergeSortedMatchesPlainMerge checks mergeSorted's galloping merge
// against the rule it implements, on random listings: every upper name,
// and every lower name that neither the upper holds nor hidden names, in
// name order, the upper's copy where both hold one.
func TestMergeSortedMatchesPlainMerge(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		names := rapid.SliceOfDistinct(rapid.StringMatching(`[a-e]{1,3}`), rapid.ID[string])
		pick := func(label string) []string {
			list := names.Draw(t, label)
			slices.Sort(list)
			return list
		}
		upper, lower, hidden := pick("upper"), pick("lower"), pick("hidden")
		// An upper entry is a directory and a lower one a file, so the
		// result tells which copy was kept.
		var up, low []fs.FileInfo
		for _, n := range upper {
			up = append(up, info{n, true})
		}
		for _, n := range lower {
			low = append(low, info{n, false})
		}
		var want []fs.FileInfo
		want = append(want, up...)
		for _, n := range lower {
			if !slices.Contains(upper, n) && !slices.Contains(hidden, n) {
				want = append(want, info{n, false})
			}
		}
		slices.SortFunc(want, byName)
		if got := mergeSorted(up, low, hidden); !reflect.DeepEqual(got, want) && len(got)+len(want) > 0 {
			t.Fatalf("mergeSorted(%q, %q, hidden %q) = %v, want %v", upper, lower, hidden, got, want)
		}
	})
}

// layerInfo is a FileInfo that says which listing it came from.
type layerInfo struct {
	info
	layer int
}

// plainMergeDir is the rule mergeDir implements, written the obvious way:
// each name is decided by the topmost listing that holds it or a whiteout
// for it, and shown if that listing holds the name itself.
func plainMergeDir(listings [][]fs.FileInfo) []fs.FileInfo {
	decided := make(map[string]bool)
	var merged []fs.FileInfo
	for _, list := range listings {
		var hidden []string
		for _, fi := range list {
			name := fi.Name()
			if isReserved(name) {
				if h, ok := hiddenName(name); ok {
					hidden = append(hidden, h)
				}
				continue
			}
			if !decided[name] {
				decided[name] = true
				merged = append(merged, fi)
			}
		}
		for _, h := range hidden {
			decided[h] = true
		}
	}
	slices.SortFunc(merged, byName)
	return merged
}

// TestMergeDirMatchesPlainMerge checks mergeDir against plainMergeDir on
// random stacks of listings, unsorted, holding names, whiteouts, opaque
// markers and internal names.
func TestMergeDirMatchesPlainMerge(t *testing.T) {
	names := rapid.SampledFrom([]string{"a", "b", "c", "d", "e", "ab", ".wh.a", ".wh.b", ".wh.c", ".wh.ab", ".wh.", opaqueMarker, internalPrefix + "work"})
	rapid.Check(t, func(t *rapid.T) {
		var listings [][]fs.FileInfo
		for k := range rapid.IntRange(1, 12).Draw(t, "layers") {
			var list []fs.FileInfo
			for _, n := range rapid.SliceOfDistinct(names, rapid.ID[string]).Draw(t, "names") {
				list = append(list, layerInfo{info{n, rapid.Bool().Draw(t, "dir")}, k})
			}
			listings = append(listings, list)
		}
		want := plainMergeDir(listings)
		if got := mergeDir(listings); !reflect.DeepEqual(got, want) && len(got)+len(want) > 0 {
			t.Fatalf("mergeDir(%v) =\n%v, want\n%v", listings, got, want)
		}
	})
}
