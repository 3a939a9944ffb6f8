package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/bep/overlayfs"
	"github.com/spf13/afero"
	"github.com/stackfs/overlay"
)

// The implementations, in the order every workload runs them.
const (
	implFloor   = "floor"
	implOverlay = "overlay"
	implCow     = "cow"
	implBep     = "bep"
	implKernel  = "kernel"
	implIOCopy  = "iocopy" // the copy-up workload's baseline: io.Copy between the two layers

	// implUpper is a reference for what the layer itself costs in two
	// workloads. Readdir: the upper's own copy of the directory (a tenth of
	// its names), listed straight from the upper; where the upper is a
	// host directory the overlay reads that listing afresh every time (it
	// keeps the rest), so its cost is part of every warm listing there.
	// Create: a plain layer, as the floor, but creating as a careful create
	// must (see createIn).
	implUpper = "upper"

	// implCopy is the Readdir workload's reference for the least a full
	// listing costs in Go: one copy (slices.Clone) of a []fs.FileInfo as
	// long as the listing, which Readdir(-1) must return afresh.
	implCopy = "copy"

	// implLayers is the first (cold) listing's reference: the directory
	// read in each of its layers, the upper and every lower, with the
	// layers' own Readdir and nothing merged, which a first listing must
	// do at least.
	implLayers = "layers"
)

// impls lists the implementations that every workload compares.
var impls = []string{implFloor, implOverlay, implCow, implBep, implKernel}

// readFs returns impl's view of the tree for the read workloads: the
// layered implementations share the tree's upper, which they never write.
// A kernel mount is unmounted when the benchmark ends.
func readFs(b *testing.B, t *tree, impl string) afero.Fs {
	b.Helper()
	switch impl {
	case implFloor:
		return t.floor.fs
	case implUpper:
		return t.upper.fs
	}
	fsys, err := layered(b, t, impl, t.upper)
	if err != nil {
		b.Fatalf("%s over %d %s lowers: %v", impl, t.n, t.kind, err)
	}
	return fsys
}

// layered returns impl's view of the tree's lowers under upper. The
// kernel's is a mount, unmounted when the benchmark ends; it skips the
// benchmark where the kernel overlay cannot be had.
func layered(b *testing.B, t *tree, impl string, upper layerDir) (afero.Fs, error) {
	switch impl {
	case implOverlay:
		return overlay.New(upper.fs, t.lowerFss(), overlayOptions()...)
	case implCow:
		return cowChain(t.lowerFss(), upper.fs), nil
	case implBep:
		return overlayfs.New(overlayfs.Options{
			Fss:           append([]afero.Fs{upper.fs}, t.lowerFss()...),
			FirstWritable: true,
		}), nil
	case implKernel:
		skipNoKernel(b, t)
		mnt, err := mountKernel(t, upper.dir)
		if err != nil {
			return nil, err
		}
		b.Cleanup(func() {
			if err := unmountKernel(mnt); err != nil {
				b.Error(err)
			}
		})
		return afero.NewBasePathFs(afero.NewOsFs(), mnt), nil
	}
	return nil, fmt.Errorf("unknown implementation %q", impl)
}

// cowChain stacks lowers with afero.CopyOnWriteFs: the bottom lower is the
// innermost base, each lower above wraps the chain so far as its base, and
// top, the writable layer, wraps them all.
func cowChain(lowers []afero.Fs, top afero.Fs) afero.Fs {
	fsys := lowers[len(lowers)-1]
	for i := len(lowers) - 2; i >= 0; i-- {
		fsys = afero.NewCopyOnWriteFs(fsys, lowers[i])
	}
	return afero.NewCopyOnWriteFs(fsys, top)
}

// skipNoKernel skips the benchmark where the kernel overlay cannot be
// measured.
func skipNoKernel(b *testing.B, t *tree) {
	b.Helper()
	switch {
	case t.kind != kindDisk:
		b.Skip("the kernel overlay needs disk layers")
	case !canMount():
		b.Skip("the kernel overlay needs root to mount")
	case os.Getenv(noKernelEnv) != "":
		b.Skipf("%s is set", noKernelEnv)
	}
}

var (
	mountsMu sync.Mutex
	mounts   = map[string]bool{} // kernel overlay mount points still mounted
)

// mountKernel mounts the kernel overlay of the tree's lowers under the host
// directory upper, with a fresh work directory and mount point, and returns
// the mount point.
func mountKernel(t *tree, upper string) (string, error) {
	base := filepath.Join(t.dir, fmt.Sprintf("k%d", seq.Add(1)))
	work, mnt := base+"w", base+"m"
	for _, d := range []string{work, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", err
		}
	}
	if err := mountOverlay(t.lowerDirs(), upper, work, mnt); err != nil {
		return "", err
	}
	mountsMu.Lock()
	mounts[mnt] = true
	mountsMu.Unlock()
	return mnt, nil
}

// unmountKernel unmounts a mount point made by mountKernel and removes its
// directories.
func unmountKernel(mnt string) error {
	mountsMu.Lock()
	delete(mounts, mnt)
	mountsMu.Unlock()
	if err := unmount(mnt); err != nil {
		return err
	}
	base := mnt[:len(mnt)-1]
	if err := os.RemoveAll(base + "w"); err != nil {
		return err
	}
	return os.Remove(mnt)
}

// unmountAll unmounts whatever kernel overlay a failed benchmark left.
func unmountAll() {
	mountsMu.Lock()
	left := make([]string, 0, len(mounts))
	for mnt := range mounts {
		left = append(left, mnt)
	}
	mountsMu.Unlock()
	for _, mnt := range left {
		if err := unmountKernel(mnt); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	}
}

// writeFs returns impl's view for one iteration of a write workload, over a
// fresh upper, and a function that tears it down. The floor gets a fresh
// plain layer made by setupFloor (the merged result the workload starts
// from); the kernel a fresh mount.
func writeFs(b *testing.B, t *tree, impl string, setupFloor func(layerDir) error) (afero.Fs, func(), error) {
	up, err := t.freshLayer()
	if err != nil {
		return nil, nil, err
	}
	if impl == implFloor || impl == implUpper {
		if err := setupFloor(up); err != nil {
			return nil, nil, err
		}
		return up.fs, func() { _ = up.drop() }, nil // best effort: a temporary layer
	}
	if impl == implKernel {
		skipNoKernel(b, t)
		mnt, err := mountKernel(t, up.dir)
		if err != nil {
			return nil, nil, err
		}
		return afero.NewBasePathFs(afero.NewOsFs(), mnt), func() {
			if err := unmountKernel(mnt); err != nil {
				b.Error(err)
			}
			_ = up.drop() // best effort: a temporary layer
		}, nil
	}
	fsys, err := layered(b, t, impl, up)
	if err != nil {
		return nil, nil, err
	}
	return fsys, func() { _ = up.drop() }, nil // best effort: a temporary layer
}
