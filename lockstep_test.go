package overlay

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/afero"
)

// noKernelEnv names the environment variable that turns a failed kernel
// overlay mount from a test failure into a loud skip.
const noKernelEnv = "OVERLAY_NO_KERNEL"

// kernelMount builds lowers (topmost first) in kernel format, mounts a
// kernel overlay over them with an empty upper directory and redirect_dir=on,
// and returns the oracle file system over the mount point. The mount is
// undone and its directories removed when tb ends. The directories live in a
// short path of their own so that no test name reaches the mount options.
func kernelMount(tb harnessTB, lowers ...layerSpec) (afero.Fs, error) {
	tb.Helper()
	return kernelMountAs(tb, false, lowers...)
}

// kernelMountAs is kernelMount, or with readOnly a mount with no upper
// directory at all, which the kernel makes read-only.
func kernelMountAs(tb harnessTB, readOnly bool, lowers ...layerSpec) (afero.Fs, error) {
	tb.Helper()
	m, err := mountKernelStack(tb, readOnly, lowers...)
	if err != nil {
		return nil, err
	}
	return m.fs, nil
}

// kernelStack is a kernel overlay mounted for a test.
type kernelStack struct {
	fs               afero.Fs // the mount point
	base             string   // the directory holding the others
	lowers           []string // the lower directories, topmost first
	upper, work, mnt string
	opts             string // the mount options
	readOnly         bool   // whether the stack has no upper
}

// mountKernelStack is kernelMountAs, returning the mount's directories too.
func mountKernelStack(tb harnessTB, readOnly bool, lowers ...layerSpec) (*kernelStack, error) {
	tb.Helper()
	base, err := os.MkdirTemp("", "ovlk-")
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { _ = os.RemoveAll(base) })
	if len(lowers) == 0 {
		lowers = []layerSpec{{}}
	}
	var lowerDirs []string
	for i, spec := range lowers {
		dir := filepath.Join(base, fmt.Sprintf("l%d", i+1))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, err
		}
		if err := tryWriteDiskLayer(dir, spec, layoutKernel); err != nil {
			return nil, err
		}
		lowerDirs = append(lowerDirs, dir)
	}
	m := &kernelStack{base: base, lowers: lowerDirs, readOnly: readOnly,
		upper: filepath.Join(base, "u"), work: filepath.Join(base, "w"), mnt: filepath.Join(base, "m")}
	for _, d := range []string{m.upper, m.work, m.mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := m.mount(); err != nil {
		return nil, err
	}
	tb.Cleanup(func() {
		if err := syscall.Unmount(m.mnt, 0); err != nil {
			_ = syscall.Unmount(m.mnt, syscall.MNT_DETACH)
		}
	})
	m.fs = newOSDirFs(m.mnt)
	return m, nil
}

// mount mounts the stack.
func (m *kernelStack) mount() error {
	m.opts = fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=on",
		strings.Join(m.lowers, ":"), m.upper, m.work)
	if m.readOnly {
		m.opts = fmt.Sprintf("lowerdir=%s,redirect_dir=on", strings.Join(m.lowers, ":"))
	}
	if err := syscall.Mount("overlay", m.mnt, "overlay", 0, m.opts); err != nil {
		return fmt.Errorf("mount -t overlay overlay -o %s %s: %w", m.opts, m.mnt, err)
	}
	return nil
}

// reset empties the upper directory, as Overlay.Reset empties its upper:
// it unmounts the stack, removes what the upper and work directories hold,
// and mounts it again.
func (m *kernelStack) reset() error {
	if err := syscall.Unmount(m.mnt, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", m.mnt, err)
	}
	for _, dir := range []string{m.upper, m.work} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return m.mount()
}

// commit makes the upper directory the topmost lower, as Overlay.Commit
// makes its upper: it unmounts the stack and mounts it again with the old
// upper first among the lowers, over a fresh upper and work directory.
func (m *kernelStack) commit() error {
	if err := syscall.Unmount(m.mnt, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", m.mnt, err)
	}
	committed := filepath.Join(m.base, fmt.Sprintf("c%d", len(m.lowers)))
	if err := os.Rename(m.upper, committed); err != nil {
		return err
	}
	if err := os.RemoveAll(m.work); err != nil {
		return err
	}
	for _, d := range []string{m.upper, m.work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	m.lowers = append([]string{committed}, m.lowers...)
	return m.mount()
}

// kernelUnavailable fails t because the kernel oracle could not be mounted,
// or skips it loudly when OVERLAY_NO_KERNEL=1.
func kernelUnavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv(noKernelEnv) == "1" {
		msg := fmt.Sprintf("SKIPPING %s: %s=1 and the kernel overlay oracle could not be mounted: %v",
			t.Name(), noKernelEnv, err)
		fmt.Fprintln(os.Stderr, msg)
		t.Skip(msg)
	}
	t.Fatalf("mounting the kernel overlay oracle failed (run as root on a kernel with overlayfs, or set %s=1 to skip): %v",
		noKernelEnv, err)
}

// kernelOracle mounts a kernel overlay over lowers for t, failing or
// skipping t when the kernel cannot mount one.
func kernelOracle(t testing.TB, lowers ...layerSpec) afero.Fs {
	t.Helper()
	k, err := kernelMount(t, lowers...)
	if err != nil {
		kernelUnavailable(t, err)
	}
	return k
}

// subjectMode says what the overlay under test is built on.
type subjectMode string

const (
	// diskLayers builds the overlay over OCI-format directories on disk and
	// an upper directory on disk.
	diskLayers subjectMode = "disk"
	// memLayers builds the overlay over MemMapFs layers, which hold no
	// symlinks.
	memLayers subjectMode = "mem"
	// tarLayers builds the overlay over OCI layer tars opened with
	// NewTarFs, which hold symlinks, and an upper directory on disk.
	tarLayers subjectMode = "tar"
	// memSubdirLayers builds the overlay over MemMapFs lowers and an upper
	// that is a directory of a MemMapFs (BasePathFs), whose handles wrap
	// MemMapFs's and which has RealPath without being on the host.
	memSubdirLayers subjectMode = "mem-subdirectory"
)

// buildSubject builds the overlay under test over lowers (topmost first)
// and an empty upper layer of the given mode.
func buildSubject(tb harnessTB, mode subjectMode, lowers ...layerSpec) afero.Fs {
	tb.Helper()
	var upper afero.Fs
	var ls []afero.Fs
	switch mode {
	case diskLayers:
		// Plain BasePathFs, as users pass it: the library keeps symlink
		// targets verbatim even though BasePathFs would rewrite them.
		upper = afero.NewBasePathFs(afero.NewOsFs(), harnessTempDir(tb))
		for _, spec := range lowers {
			ls = append(ls, ociDiskLower(tb, spec))
		}
	case memLayers:
		upper = afero.NewMemMapFs()
		for _, spec := range lowers {
			ls = append(ls, ociMemLower(tb, spec))
		}
	case memSubdirLayers:
		mem := afero.NewMemMapFs()
		if err := mem.MkdirAll("/sandbox", 0o755); err != nil {
			tb.Fatalf("%v", err)
		}
		upper = afero.NewBasePathFs(mem, "/sandbox")
		for _, spec := range lowers {
			ls = append(ls, ociMemLower(tb, spec))
		}
	case tarLayers:
		upper = afero.NewBasePathFs(afero.NewOsFs(), harnessTempDir(tb))
		for _, spec := range lowers {
			ls = append(ls, ociTarLower(tb, spec))
		}
	default:
		tb.Fatalf("unknown layer mode %q", mode)
	}
	o, err := New(upper, ls)
	if err != nil {
		tb.Fatalf("New over %s layers: %v", mode, err)
	}
	return o
}

// lockstep applies operations to an oracle and to the overlay under test in
// turn and keeps the history needed to explain a difference.
type lockstep struct {
	oracle, subject afero.Fs
	oracleName      string
	// subjectName names the subject in reports; "" means "overlay".
	subjectName string
	lowers      []layerSpec
	// subjectSorts makes ReadDirNames sort the subject's listing too, for
	// subjects (such as a plain directory) that promise no order.
	subjectSorts bool
	// same decides whether two results agree; nil means exactly equal.
	same  func(want, got opResult) bool
	lines []string
	// resetOracle, if set, empties the oracle's upper, for a Reset of the
	// subject; commitOracle, if set, makes the oracle's upper a lower, for
	// a Commit of the subject; committed says the subject was committed
	// since the start and the oracle was not.
	resetOracle, commitOracle func() error
	committed                 bool
}

// subjectLabel returns the subject's name for reports.
func (l *lockstep) subjectLabel() string {
	if l.subjectName == "" {
		return "overlay"
	}
	return l.subjectName
}

// apply runs o on both sides and returns both results and a description of
// the problem, or "" when they agree.
func (l *lockstep) apply(o fsOp) (want, got opResult, problem string) {
	n := len(l.lines) + 1
	want, err := applyOp(l.oracle, o, true)
	if err != nil {
		l.lines = append(l.lines, fmt.Sprintf("#%d %v: %s error without errno", n, o, l.oracleName))
		return want, got, fmt.Sprintf("harness bug: the %s oracle failed #%d %v: %v", l.oracleName, n, o, err)
	}
	got, err = applyOp(l.subject, o, l.subjectSorts)
	switch {
	case err != nil:
		problem = fmt.Sprintf("#%d %v: %s %v, %s %v", n, o, l.oracleName, want, l.subjectLabel(), err)
	case l.same != nil && !l.same(want, got), l.same == nil && want != got:
		problem = fmt.Sprintf("#%d %v: %s %v, %s %v", n, o, l.oracleName, want, l.subjectLabel(), got)
	}
	gotText := got.String()
	if err != nil {
		gotText = err.Error()
	}
	l.lines = append(l.lines, fmt.Sprintf("#%d %v: %s %v, %s %s", n, o, l.oracleName, want, l.subjectLabel(), gotText))
	return want, got, problem
}

// checkTree compares the merged trees and returns a description of the
// differences, or "".
func (l *lockstep) checkTree() string {
	if err := checkSameTree(l.oracle, l.subject); err != nil {
		return fmt.Sprintf("merged trees differ (%s checked against %s):\n%s", l.subjectLabel(), l.oracleName, indentLines(err.Error(), "    "))
	}
	return ""
}

// report explains problem with the layers and the operations so far.
func (l *lockstep) report(problem string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nlower layers (L1 topmost):\n", problem)
	for i, spec := range l.lowers {
		fmt.Fprintf(&b, "  L%d:\n%s", i+1, spec)
	}
	fmt.Fprintf(&b, "operations (%s result, %s result):\n", l.oracleName, l.subjectLabel())
	if len(l.lines) == 0 {
		b.WriteString("  (none)\n")
	}
	for _, line := range l.lines {
		fmt.Fprintf(&b, "  %s\n", line)
	}
	return b.String()
}

// indentLines prefixes every line of s.
func indentLines(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}
