package overlay

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"testing"

	"github.com/spf13/afero"
)

// chainOf returns the ids of the nodes the set holds for name, in order.
func chainOf(s *handleSet, name string, ids map[*node]int) []int {
	var got []int
	for n := firstOn(s, name); n != nil; n = n.next {
		got = append(got, ids[n])
	}
	return got
}

// firstOn returns the newest handle the set holds for name, nil if none.
func firstOn(s *handleSet, name string) *node {
	if c := s.chains[name]; c != nil {
		return c.first
	}
	return nil
}

func TestHandleSetChains(t *testing.T) {
	tests := []struct {
		name    string
		release []int // handles 0..2 were acquired on "f" in order; release these
		want    []int // the chain left, newest first
	}{
		{"none", nil, []int{2, 1, 0}},
		{"newest", []int{2}, []int{1, 0}},
		{"middle", []int{1}, []int{2, 0}},
		{"oldest", []int{0}, []int{2, 1}},
		{"all", []int{1, 2, 0}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s handleSet
			nodes := make([]*node, 3)
			ids := map[*node]int{}
			for i := range nodes {
				nodes[i] = new(node)
				ids[nodes[i]] = i
				s.acquire("f", nodes[i], s.epoch.Load())
			}
			for _, i := range tt.release {
				s.release(nodes[i])
			}
			if got := chainOf(&s, "f", ids); !slices.Equal(got, tt.want) {
				t.Fatalf("chain = %v, want %v", got, tt.want)
			}
			n := new(node)
			s.acquire("f", n, s.epoch.Load())
			if c := s.chains["f"]; c.first != n || n.chain != c || len(s.chains) != 1 {
				t.Fatalf("a new handle on f: chain %p first %p, want %p on the one chain", n.chain, c.first, n)
			}
		})
	}
}

// TestHandleSetDropsEmptyChains checks that the chains of names no handle
// is open on any more are dropped once they may outnumber the others, that
// the chains of open handles never are, and that a name opened again takes
// its chain up again.
func TestHandleSetDropsEmptyChains(t *testing.T) {
	var s handleSet
	live := make([]*node, 100)
	for i := range live {
		live[i] = new(node)
		s.acquire(fmt.Sprintf("live/%d", i), live[i], s.epoch.Load())
	}
	most := 0
	for i := range 10000 {
		n := new(node)
		s.acquire(fmt.Sprintf("closed/%d", i), n, s.epoch.Load())
		s.release(n)
		most = max(most, len(s.chains))
	}
	if want := 2*len(live) + keptEmpty + 2; most > want {
		t.Errorf("the set held up to %d chains for %d open handles, want at most %d", most, len(live), want)
	}
	for i, n := range live {
		if p, ok := s.name(n); !ok || p != fmt.Sprintf("live/%d", i) || firstOn(&s, p) != n {
			t.Fatalf("an open handle's chain was dropped: %q, %v", p, ok)
		}
	}
	c := s.chains["again"]
	for range 3 {
		n := new(node)
		s.acquire("again", n, s.epoch.Load())
		if c != nil && n.chain != c {
			t.Fatal("a name opened again got a new chain while its empty one was kept")
		}
		c = n.chain
		s.release(n)
	}
}

func TestHandleSetFollowsEveryHandle(t *testing.T) {
	var s handleSet
	up := &layer{fs: afero.NewMemMapFs(), rooted: true}
	if err := afero.WriteFile(up.fs, "/d/f", []byte("upper"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, b, c := new(node), new(node), new(node)
	s.acquire("d/f", a, s.epoch.Load())
	s.acquire("d/f", b, s.epoch.Load())
	s.acquire("d/g", c, s.epoch.Load())
	s.copiedUp("d/f", up)
	if a.gen.Load() != 1 || b.gen.Load() != 1 || c.gen.Load() != 0 {
		t.Fatalf("copy-up of d/f: generations %d %d %d, want 1 1 0", a.gen.Load(), b.gen.Load(), c.gen.Load())
	}
	if a.copy == nil || b.copy == nil || a.copy == b.copy || c.copy != nil {
		t.Fatalf("copy-up of d/f: copies %v %v %v, want one each for a and b", a.copy, b.copy, c.copy)
	}
	s.renamed("d", "e")
	for n, want := range map[*node]string{a: "e/f", b: "e/f", c: "e/g"} {
		if p, ok := s.name(n); !ok || p != want {
			t.Errorf("after renaming d to e: a handle is at %q, %v, want %q", p, ok, want)
		}
	}
	s.removed("e/f")
	copyA, gen := s.takeCopy(a)
	if copyA == nil || gen != 1 {
		t.Fatalf("after removing e/f: a's copy %v at generation %d, want the copy at 1", copyA, gen)
	}
	if got, err := io.ReadAll(copyA); err != nil || string(got) != "upper" {
		t.Fatalf("a's copy reads %q, %v; want the upper copy", got, err)
	}
	s.release(a) // no longer held: nothing to do, nothing to break
	if firstOn(&s, "e/f") != nil || firstOn(&s, "e/g") != c {
		t.Fatalf("after removing e/f: chains = %v", s.chains)
	}
	n := new(node)
	s.acquire("e/f", n, s.epoch.Load()) // a new file at the old name
	s.release(b)                        // a handle on the removed file leaves the new one alone
	if firstOn(&s, "e/f") != n {
		t.Fatal("releasing a removed file's handle dropped the new file's")
	}
	if b.copy != nil {
		t.Fatal("releasing b left its unused copy open")
	}
}

func TestHandleSetDiscardKeepsLowerFilesHandles(t *testing.T) {
	var s handleSet
	a, b, c, d := &node{inUpper: true}, new(node), &node{inUpper: true}, new(node)
	for _, n := range []*node{a, b, c} {
		s.acquire("f", n, s.epoch.Load())
	}
	s.acquire("g", d, s.epoch.Load())
	s.discarded()
	if firstOn(&s, "f") != b || b.next != nil || firstOn(&s, "g") != d {
		t.Fatalf("after a Reset: f's handles start at %p (b is %p, b.next %p), g's at %p (d is %p)", firstOn(&s, "f"), b, b.next, firstOn(&s, "g"), d)
	}
	if !a.gone || !c.gone || b.gone || d.gone {
		t.Fatalf("after a Reset: gone a=%t b=%t c=%t d=%t, want the upper files' a and c", a.gone, b.gone, c.gone, d.gone)
	}
	s.release(a) // forgotten: nothing to do, nothing to break
	if firstOn(&s, "f") != b {
		t.Fatal("releasing a discarded file's handle dropped a lower file's")
	}
	s.committed()
	up := &layer{fs: afero.NewMemMapFs(), rooted: true}
	if err := afero.WriteFile(up.fs, "/f", []byte("upper"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.copiedUp("f", up)
	if !b.inUpper {
		t.Fatal("a copy-up left b's file in the lower")
	}
	s.committed()
	if b.inUpper {
		t.Fatal("a Commit left b's file in the upper")
	}
}

// TestHandleSetRefusesTouchedNames checks which changes between a lookup
// and the tracking of its handle make acquire refuse: those that may have
// moved, replaced or copied up the name looked up, and any change once the
// set no longer keeps the names of all changes since the lookup. Changes
// elsewhere, which racing calls make all the time, must not.
func TestHandleSetRefusesTouchedNames(t *testing.T) {
	up := &layer{fs: afero.NewMemMapFs(), rooted: true}
	tests := []struct {
		name   string
		change func(s *handleSet)
		refuse bool
	}{
		{"nothing", func(*handleSet) {}, false},
		{"copy-up of the name", func(s *handleSet) { s.copiedUp("d/f", up) }, true},
		{"copy-up of another name", func(s *handleSet) { s.copiedUp("d/g", up) }, false},
		{"copy-up of a longer name", func(s *handleSet) { s.copiedUp("d/f2", up) }, false},
		{"removal of the name", func(s *handleSet) { s.removed("d/f") }, true},
		{"removal of its directory", func(s *handleSet) { s.removed("d") }, true},
		{"removal of a sibling", func(s *handleSet) { s.removed("d/g") }, false},
		{"rename of the name", func(s *handleSet) { s.renamed("d/f", "e") }, true},
		{"rename of its directory", func(s *handleSet) { s.renamed("d", "e") }, true},
		{"rename onto the name", func(s *handleSet) { s.renamed("x", "d/f") }, true},
		{"rename onto its directory", func(s *handleSet) { s.renamed("x", "d") }, true},
		{"rename elsewhere", func(s *handleSet) { s.renamed("x", "y") }, false},
		{"Reset", func(s *handleSet) { s.discarded() }, true},
		{"many changes elsewhere", func(s *handleSet) {
			for range keptChanges {
				s.removed("x")
			}
		}, false},
		{"more changes elsewhere than are kept", func(s *handleSet) {
			for range keptChanges + 1 {
				s.removed("x")
			}
		}, true},
	}
	for _, tt := range tests {
		var s handleSet
		s.removed("before") // a change from before the lookup
		since := s.epoch.Load()
		tt.change(&s)
		if got := !s.acquire("d/f", new(node), since); got != tt.refuse {
			t.Errorf("%s: acquire refused = %v, want %v", tt.name, got, tt.refuse)
		}
		if !s.acquire("d/f", new(node), s.epoch.Load()) {
			t.Errorf("%s: acquire with the current epoch failed", tt.name)
		}
	}
}

// TestReadHandleFollowsCopyUpRacingItsOpen copies a lower file up, and
// writes the copy, between an Open's lookup and the tracking of its handle:
// the handle must still read the new data, as one opened just before the
// copy-up does.
func TestReadHandleFollowsCopyUpRacingItsOpen(t *testing.T) {
	lower := afero.NewMemMapFs()
	if err := afero.WriteFile(lower, "/f", []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	o, _ := newOverlay(t, lower)
	if _, err := o.Stat("f"); err != nil { // the lookup cache now answers without a lock
		t.Fatal(err)
	}
	once := true
	beforeTracking = func(string) {
		if once {
			once = false
			if err := afero.WriteFile(o, "f", []byte("upper"), 0o644); err != nil {
				t.Error(err)
			}
		}
	}
	defer func() { beforeTracking = nil }()
	f, err := o.Open("f")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if once {
		t.Fatal("the hook never ran: the test tests nothing")
	}
	b, err := io.ReadAll(f)
	if err != nil || string(b) != "upper" {
		t.Fatalf("read %q, %v; want the copied-up file's \"upper\"", b, err)
	}
}

func TestReadOnlyOpensAreNotTracked(t *testing.T) {
	lower := afero.NewMemMapFs()
	if err := afero.WriteFile(lower, "/f", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, upper := range []afero.Fs{nil, afero.NewMemMapFs()} {
		o, err := New(upper, []afero.Fs{lower})
		if err != nil {
			t.Fatal(err)
		}
		f, err := o.Open("f")
		if err != nil {
			t.Fatal(err)
		}
		want := 1 // a copy-up would have to find the handle
		if upper == nil {
			want = 0 // nothing is ever copied up
		}
		if got := len(o.handles.chains); got != want {
			t.Errorf("with upper %T: %d names tracked while a lower file is open, want %d", upper, got, want)
		}
		f.Close()
	}
}

// TestDirHandleStatAfterRemoval checks that Stat on a handle of a removed
// directory reports the directory as it was when it went, as fstat on a
// kernel overlay does, not as it was when the handle was opened; also for
// a directory removed with its parent, and one a rename replaced.
func TestDirHandleStatAfterRemoval(t *testing.T) {
	tests := []struct {
		name   string
		handle string
		remove func(o *Overlay) error
	}{
		{"removed", "x", func(o *Overlay) error { return o.RemoveAll("x") }},
		{"removed with its parent", "x/y", func(o *Overlay) error { return o.RemoveAll("x") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lower := afero.NewMemMapFs()
			if err := lower.MkdirAll("/x/y", 0o755); err != nil {
				t.Fatal(err)
			}
			o, err := New(afero.NewMemMapFs(), []afero.Fs{lower})
			if err != nil {
				t.Fatal(err)
			}
			d, err := o.Open(tt.handle)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			want := 0o775 | os.ModeSetgid
			if err := errors.Join(o.Chmod(tt.handle, want), tt.remove(o)); err != nil {
				t.Fatal(err)
			}
			fi, err := d.Stat()
			if err != nil || fi.Mode() != want|os.ModeDir {
				t.Errorf("Stat on the handle = %v, %v; want mode %v", fi.Mode(), err, want|os.ModeDir)
			}
		})
	}
}
