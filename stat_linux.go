package overlay

import (
	"io/fs"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// fileOwner returns the owner that a layer on a real file system reports.
func fileOwner(info fs.FileInfo) (uid, gid int, ok bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return int(st.Uid), int(st.Gid), true
}

// fileAtime returns the access time a layer on a real file system reports,
// and the modification time where the layer keeps no access time.
func fileAtime(info fs.FileInfo) time.Time {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return info.ModTime()
	}
	return time.Unix(st.Atim.Unix())
}

// isHostInfo reports whether info comes from a real file system, which
// updates directory times by itself.
func isHostInfo(info fs.FileInfo) bool {
	_, ok := info.Sys().(*syscall.Stat_t)
	return ok
}

// lchtimes sets the times of the host file p without following a symlink.
func lchtimes(p string, atime, mtime time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// oNoatime opens a file without updating its access time (O_NOATIME).
const oNoatime = unix.O_NOATIME
