package interop

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestKernelOverlay mounts the kernel's overlayfs over our exported layers
// (their markers converted to the kernel's whiteouts and opaque xattrs) and
// checks that the mount shows what ApplyLayer makes of the same layers, and
// what our overlay's merged view is.
func TestKernelOverlay(t *testing.T) {
	if os.Getenv("OVERLAY_NO_KERNEL") == "1" {
		t.Skip("OVERLAY_NO_KERNEL=1: SKIPPING the kernel overlayfs comparison")
	}
	if !isRoot() {
		t.Fatal("the kernel overlayfs comparison needs root (set OVERLAY_NO_KERNEL=1 to skip it)")
	}
	for _, st := range stacks(t) {
		t.Run(st.name, func(t *testing.T) {
			mnt := mountLayers(t, st.layers)
			if err := compareTrees(t, mnt, applyLayers(t, st.layers)); err != nil {
				t.Errorf("ApplyLayer differs from the kernel overlay mount:\n%v", err)
			}
			if err := compareTrees(t, mnt, flattenLayers(t, st.layers)); err != nil {
				t.Errorf("our merged view differs from the kernel overlay mount:\n%v", err)
			}
		})
	}
}

// mountLayers extracts each layer into a kernel lower directory and mounts
// overlayfs over them with an empty upper; the mount is undone at cleanup.
func mountLayers(t *testing.T, layers [][]byte) string {
	t.Helper()
	top := t.TempDir()
	var lowers []string
	for i, l := range layers {
		dir := filepath.Join(top, fmt.Sprintf("l%d", i))
		must(t, os.Mkdir(dir, 0o755))
		extractRaw(t, l, dir, convertMarkers)
		lowers = append([]string{dir}, lowers...)
	}
	upper, work, mnt := filepath.Join(top, "upper"), filepath.Join(top, "work"), filepath.Join(top, "mnt")
	for _, d := range []string{upper, work, mnt} {
		must(t, os.Mkdir(d, 0o755))
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=on", strings.Join(lowers, ":"), upper, work)
	if err := unix.Mount("overlay", mnt, "overlay", 0, opts); err != nil {
		t.Fatalf("mount -t overlay overlay -o %s %s: %v (set OVERLAY_NO_KERNEL=1 to skip)", opts, mnt, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("umount %s: %v", mnt, err)
		}
	})
	return mnt
}
