package overlay

import (
	"io/fs"
	"strconv"
	"sync"
	"sync/atomic"
)

// workState keeps the work directory, ".wh..wh.work" at the root of the
// upper, where copy-ups and doomed directories are built or torn down.
//
// An OCI upper keeps it for the overlay's life: it is a reserved name,
// which no reader of the layer shows. A kernel-format upper holds it only
// while a call uses it, since the kernel would show it as an ordinary
// directory, and the kernel may mount the upper while the overlay lives:
// between calls the upper holds nothing of the overlay's own.
type workState struct {
	tidy     bool         // the work directory lives only while calls use it
	inflight atomic.Int64 // calls in progress, counted where tidy
	mu       sync.Mutex   // guards exists, and creating and removing it
	exists   bool
}

// tmpName returns a fresh name in the work directory, creating the
// directory first where it lives only while calls use it. If that fails,
// creating the name fails too, which the caller reports.
func (o *Overlay) tmpName() string {
	if o.work.tidy {
		o.work.mu.Lock()
		if !o.work.exists {
			o.work.exists = setWorkDir(o.layers[0], true) == nil
		}
		o.work.mu.Unlock()
	}
	return workDir + "/" + strconv.FormatUint(o.tmpSeq.Add(1), 36)
}

// callStarted counts a call in progress, where that matters: a
// kernel-format upper's work directory goes when the last call ends.
func (o *Overlay) callStarted() {
	if o.work.tidy {
		o.work.inflight.Add(1)
	}
}

// callEnded ends a call counted by callStarted; the last one to end
// removes the work directory. The caller still holds o.ops, so the upper
// is the one the call used.
func (o *Overlay) callEnded() {
	if o.work.tidy && o.work.inflight.Add(-1) == 0 {
		o.tidyWork()
	}
}

// tidyWork removes a kernel-format upper's work directory unless a call is
// using it. A failure leaves it for the next call to end, or the next New.
func (o *Overlay) tidyWork() {
	o.work.mu.Lock()
	defer o.work.mu.Unlock()
	if o.work.exists && o.work.inflight.Load() == 0 {
		o.work.exists = setWorkDir(o.layers[0], false) != nil
	}
}

// takeParentGroup gives tmp, an entry built in the work directory for the
// new name p, the group it would have got had it been made at p: on Linux
// an entry made in a set-group-ID directory takes that directory's group.
// Layers that do not report groups are left alone. symlink says whether
// tmp is a symlink, whose own group is set, not its target's.
func (o *Overlay) takeParentGroup(tmp, p string, symlink bool) error {
	up := o.layers[0]
	fi, err := up.lstat(parentOf(p))
	if err != nil || fi.Mode()&fs.ModeSetgid == 0 {
		return err
	}
	_, gid, ok := ownerOf(fi)
	if !ok {
		return nil
	}
	return up.chown(tmp, -1, gid, symlink)
}
