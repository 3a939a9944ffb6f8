//go:build !linux

package overlay

import (
	"io/fs"
	"time"
)

// fileOwner reports no owner where the overlay cannot read one portably.
func fileOwner(fs.FileInfo) (uid, gid int, ok bool) { return 0, 0, false }

// fileAtime returns the modification time where no access time is known.
func fileAtime(info fs.FileInfo) time.Time { return info.ModTime() }

// isHostInfo reports false: only Linux is known to update directory times.
func isHostInfo(fs.FileInfo) bool { return false }

// lchtimes leaves a symlink's times alone where it cannot set them.
func lchtimes(string, time.Time, time.Time) error { return nil }

// oNoatime is 0 where there is no O_NOATIME.
const oNoatime = 0
