//go:build linux

package bench

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

// canMount reports whether this process may mount file systems: a tmpfs for
// the disk layers and the kernel overlay.
func canMount() bool { return os.Geteuid() == 0 }

// mountTmpfs mounts a fresh tmpfs on dir.
func mountTmpfs(dir string) error {
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=80%,mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	return nil
}

// unmount detaches the file system mounted on dir.
func unmount(dir string) error {
	if err := syscall.Unmount(dir, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// mountOverlay mounts the kernel overlayfs on mnt, lowers[0] topmost, as the
// library's tests do: with redirect_dir=on (and volatile where
// OVERLAY_BENCH_VOLATILE asks for it).
func mountOverlay(lowers []string, upper, work, mnt string) error {
	opts := "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + upper + ",workdir=" + work + ",redirect_dir=on"
	if volatile() {
		opts += ",volatile"
	}
	if len(opts) >= os.Getpagesize() {
		return fmt.Errorf("overlay mount options are %d bytes, over the kernel's one-page limit", len(opts))
	}
	if err := syscall.Mount("overlay", mnt, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", mnt, err)
	}
	return nil
}

// mknodWhiteout creates the kernel's whiteout, a character device 0:0, at
// the host path p.
func mknodWhiteout(p string) error {
	if err := syscall.Mknod(p, syscall.S_IFCHR, 0); err != nil {
		return fmt.Errorf("mknod whiteout %s: %w", p, err)
	}
	return nil
}

// fsTypeName names the type of the file system holding dir, for the output.
func fsTypeName(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "unknown file system"
	}
	switch uint32(st.Type) {
	case 0x01021994:
		return "tmpfs"
	case 0xEF53:
		return "ext4"
	case 0x58465342:
		return "xfs"
	case 0x9123683E:
		return "btrfs"
	case 0x794c7630:
		return "overlayfs"
	}
	return fmt.Sprintf("file system type %#x", st.Type)
}
