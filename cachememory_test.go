package overlay

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/spf13/afero"
)

// TestCacheMemoryPerName measures what an overlay keeps for each name it
// looked up (the lookup cache and the lowers' index) and for each entry of
// a directory it listed (the lowers' merged listing and the merged
// listing), and checks that it is proportional to what was looked up: as
// much per name for a few names as for many, and under a bound. The README
// quotes these numbers.
func TestCacheMemoryPerName(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a directory of 20k names")
	}
	const names = 20000
	lower := afero.NewMemMapFs()
	for i := range names {
		if err := afero.WriteFile(lower, nameNo(i), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	perName := func(k int) float64 {
		o := mustNew(t, afero.NewMemMapFs(), lower)
		grown := heapGrowth(func() {
			for i := range k {
				if _, err := o.Stat(nameNo(i)); err != nil {
					t.Fatal(err)
				}
			}
		})
		runtime.KeepAlive(o)
		return float64(grown) / float64(k)
	}
	few, many := perName(names/8), perName(names)
	t.Logf("kept per name looked up: %.0f bytes for %d names, %.0f for %d", few, names/8, many, names)
	if many > 1024 || few > 1.25*many+64 || many > 1.25*few+64 {
		t.Errorf("kept per name looked up: %.0f bytes for %d names, %.0f for %d; want them alike and under 1 KiB", few, names/8, many, names)
	}

	o := mustNew(t, afero.NewMemMapFs(), lower)
	grown := heapGrowth(func() {
		if _, err := afero.ReadDir(o, "/d"); err != nil {
			t.Fatal(err)
		}
	})
	runtime.KeepAlive(o)
	perEntry := float64(grown) / names
	t.Logf("kept per entry of a listed directory: %.0f bytes", perEntry)
	if perEntry > 512 {
		t.Errorf("kept per entry of a listed directory: %.0f bytes, want under 512", perEntry)
	}
}

// nameNo is the i-th name of TestCacheMemoryPerName's directory.
func nameNo(i int) string { return fmt.Sprintf("/d/f%05d", i) }

// mustNew is New over one lower, failing t on an error.
func mustNew(t *testing.T, upper, lower afero.Fs) *Overlay {
	t.Helper()
	o, err := New(upper, []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// heapGrowth returns how much the live heap grew across do.
func heapGrowth(do func()) int64 {
	before := liveHeap()
	do()
	return int64(liveHeap()) - int64(before)
}

// liveHeap returns the bytes of the heap's live objects, after a collection.
func liveHeap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
