package overlay

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/afero"
	"pgregory.net/rapid"
)

// maxRandomHandles is how many handles a random handle check keeps open at
// once.
const maxRandomHandles = 3

// handleFlags are the flags random handles are opened with: read-only
// ones most often, and every flag of the operations' pool.
var handleFlags = append([]int{os.O_RDONLY, os.O_RDONLY, os.O_WRONLY | os.O_APPEND, os.O_RDWR | os.O_CREATE}, poolFlags...)

// handlePair is one handle opened on both sides of a lockstep check.
type handlePair struct {
	name      string
	want, got afero.File // the kernel's and the overlay's
	dir       bool       // whether the handle is a directory's
	listed    bool       // whether a directory listing ran since the start
}

// readResult returns the kernel's read result for h, as the overlay gives
// it. read(2) of a directory is EISDIR, but once a listing has moved the
// position of a directory on ext4 to its end-of-directory cookie, the
// kernel's range check of that position fails first, with EINVAL, before
// the file system is asked. The overlay has no such positions: it says
// EISDIR.
func (h *handlePair) readResult(want string) string {
	if h.listed {
		return strings.Replace(want, errnoName(syscall.EINVAL), errnoName(syscall.EISDIR), 1)
	}
	return want
}

// TestKernelRandomHandles runs the random operations of TestKernelRandom on
// a kernel overlay mount and on the overlay while handles, opened at random
// times on random names with random flags, stay open across them. At
// random times a handle reads a few bytes, reads the rest, reads or writes
// at an offset, writes, truncates, seeks, is described by Stat, lists its
// directory, rewinds, or is closed. Every result must agree with the
// kernel's, as must the merged tree, over MemMapFs layers, disk layers, a
// kernel-format upper, and no upper at all (read-only, MemMapFs lowers).
// It checks what no single operation shows: what an open handle sees after
// copy-ups, renames and removals.
func TestKernelRandomHandles(t *testing.T) {
	checkPerMode(t, func(rt *rapid.T, mode subjectMode) {
		runRandomHandles(rt, mode == diskLayers, kernelVsOverlay(mode))
	})
	t.Run("kernel-format", func(t *testing.T) {
		rapid.Check(t, func(rt *rapid.T) {
			runRandomHandles(rt, true, kernelVsKernelFormat)
		})
	})
	t.Run("read-only", func(t *testing.T) {
		rapid.Check(t, func(rt *rapid.T) {
			runRandomHandles(rt, false, readOnlyKernelVsOverlay(memLayers))
		})
	})
}

// kernelVsKernelFormat is the pairFunc comparing the kernel with the
// overlay over a kernel-format upper, on the same kind of directories.
func kernelVsKernelFormat(tb harnessTB, lowers ...layerSpec) *lockstep {
	oracle, err := kernelMount(tb, lowers...)
	if err != nil {
		tb.Fatalf("mounting the kernel oracle: %v", err)
	}
	s := newKernelFormatStack(tb, lowers...)
	return &lockstep{oracle: oracle, subject: s.o, oracleName: "kernel", subjectName: "overlay (kernel format)", lowers: lowers}
}

// runRandomHandles is one random handle check.
func runRandomHandles(rt *rapid.T, symlinks bool, pair pairFunc) {
	ls := pair(rt, drawLowers(rt, 2, symlinks)...)
	commitOracle := ls.commitOracle
	var handles []*handlePair
	defer func() {
		for _, h := range handles {
			_ = h.want.Close() // best effort: the check is over
			_ = h.got.Close()
		}
	}()
	// compare records what a handle call returned on each side and fails
	// the check if the two differ.
	compare := func(what string, h *handlePair, want, got string) {
		ls.lines = append(ls.lines, fmt.Sprintf("#%d %s %q: kernel %s, overlay %s", len(ls.lines)+1, what, h.name, want, got))
		if want != got {
			rt.Fatal(ls.report(fmt.Sprintf("%s on a handle of %q: kernel %s, overlay %s", what, h.name, want, got)))
		}
	}
	// pick draws one of the open handles, skipping the action if none is.
	pick := func(rt *rapid.T) (int, *handlePair) {
		if len(handles) == 0 {
			rt.Skip("no handle is open")
		}
		i := rapid.IntRange(0, len(handles)-1).Draw(rt, "handle")
		return i, handles[i]
	}
	// applyDrawnOp applies a random operation on both sides, at the name
	// at if it is not "".
	applyDrawnOp := func(rt *rapid.T, at string) {
		k := fsOpKind(rapid.IntRange(0, int(fopCount)-1).Draw(rt, "kind"))
		if k == fopSymlink && !symlinks {
			rt.Skip("no symlinks in these layers")
		}
		op := drawOp(rt, k)
		if at != "" {
			op.Path = at
		}
		if k == fopSymlink && strings.HasPrefix(op.Data, "..") && !strings.Contains(op.Path, "/") {
			rt.Skip("a top-level link must not climb out of the tree")
		}
		if climbsOut(ls.oracle, op) {
			rt.Skip("the op would move a climbing symlink to the top level")
		}
		if _, _, p := ls.apply(op); p != "" {
			rt.Fatal(ls.report(p))
		}
	}
	actions := map[string]func(*rapid.T){
		"": func(rt *rapid.T) {
			if p := ls.checkTree(); p != "" {
				rt.Fatal(ls.report(p))
			}
		},
		"op": func(rt *rapid.T) { applyDrawnOp(rt, "") },
		"op on a handle's name": func(rt *rapid.T) {
			_, h := pick(rt)
			applyDrawnOp(rt, h.name)
		},
		"open": func(rt *rapid.T) {
			if len(handles) == maxRandomHandles {
				rt.Skip("enough handles are open")
			}
			name := rapid.SampledFrom(poolPaths).Draw(rt, "name")
			flag := rapid.SampledFrom(handleFlags).Draw(rt, "flag")
			h := &handlePair{name: name}
			var werr, gerr error
			h.want, werr = ls.oracle.OpenFile(name, flag, 0o644)
			h.got, gerr = ls.subject.OpenFile(name, flag, 0o644)
			compare(fmt.Sprintf("OpenFile(%#o)", flag), h, errnoName(werr), errnoName(gerr))
			if werr == nil {
				fi, err := h.want.Stat()
				h.dir = err == nil && fi.IsDir()
				handles = append(handles, h)
			}
		},
		"read": func(rt *rapid.T) {
			_, h := pick(rt)
			n := rapid.IntRange(1, 4).Draw(rt, "bytes")
			compare(fmt.Sprintf("Read(%d)", n), h, h.readResult(readSome(h.want, n)), readSome(h.got, n))
		},
		"readAll": func(rt *rapid.T) {
			_, h := pick(rt)
			compare("ReadAll", h, h.readResult(readRest(h.want)), readRest(h.got))
		},
		"write": func(rt *rapid.T) {
			_, h := pick(rt)
			data := []byte(rapid.SampledFrom(poolContents).Draw(rt, "data"))
			compare(fmt.Sprintf("Write(%q)", data), h, writeSome(h.want, data), writeSome(h.got, data))
		},
		"truncate": func(rt *rapid.T) {
			_, h := pick(rt)
			size := rapid.SampledFrom(poolSizes).Draw(rt, "size")
			compare(fmt.Sprintf("Truncate(%d)", size), h, errnoName(h.want.Truncate(size)), errnoName(h.got.Truncate(size)))
		},
		"seek": func(rt *rapid.T) {
			_, h := pick(rt)
			whence := rapid.IntRange(io.SeekStart, io.SeekEnd).Draw(rt, "whence")
			off := rapid.Int64Range(-2, 6).Draw(rt, "offset")
			if h.dir {
				rt.Skip("a directory's offsets are its layer's own cookies; only a rewind compares")
			}
			h.listed = h.listed && !(whence == io.SeekStart && off == 0)
			compare(fmt.Sprintf("Seek(%d, %d)", off, whence), h, seekTo(h.want, off, whence), seekTo(h.got, off, whence))
		},
		"readAt": func(rt *rapid.T) {
			_, h := pick(rt)
			off := rapid.Int64Range(0, 24).Draw(rt, "offset")
			compare(fmt.Sprintf("ReadAt(4, %d)", off), h, h.readResult(readAt(h.want, off)), readAt(h.got, off))
		},
		"writeAt": func(rt *rapid.T) {
			_, h := pick(rt)
			off := rapid.Int64Range(0, 24).Draw(rt, "offset")
			data := []byte(rapid.SampledFrom(poolContents).Draw(rt, "data"))
			compare(fmt.Sprintf("WriteAt(%q, %d)", data, off), h, writeAtResult(writeAt(h.want, data, off)), writeAt(h.got, data, off))
		},
		"stat": func(rt *rapid.T) {
			_, h := pick(rt)
			compare("Stat", h, statHandle(h.want), statHandle(h.got))
		},
		"readdir": func(rt *rapid.T) {
			_, h := pick(rt)
			h.listed = true
			compare("Readdirnames(-1)", h, listHandle(h.want), listHandle(h.got))
		},
		"rewind": func(rt *rapid.T) {
			_, h := pick(rt)
			h.listed = false
			compare("Seek(0, 0)", h, seekStart(h.want), seekStart(h.got))
		},
		"commit": func(rt *rapid.T) {
			o, ok := ls.subject.(*Overlay)
			if !ok || o.readOnly() || o.layers[0].noOCI {
				rt.Skip("only an OCI-format upper is committed here")
			}
			ls.commitOracle = commitOracle
			if len(handles) > 0 {
				ls.commitOracle = nil // open handles keep the kernel's mount busy
			}
			ls.commit(rt)
		},
		"close": func(rt *rapid.T) {
			i, h := pick(rt)
			handles = slices.Delete(handles, i, i+1)
			compare("Close", h, errnoName(h.want.Close()), errnoName(h.got.Close()))
		},
	}
	rt.Repeat(actions)
}

// writeAtResult returns the kernel side's WriteAt result as the overlay
// gives it: *os.File refuses WriteAt on an O_APPEND handle with an error
// of its own, without an errno; the overlay says EINVAL.
func writeAtResult(want string) string {
	if strings.Contains(want, "O_APPEND") {
		return "0 " + errnoName(syscall.EINVAL)
	}
	return want
}

// readSome reads up to n bytes from f and describes the result.
func readSome(f afero.File, n int) string {
	b := make([]byte, n)
	got, err := f.Read(b)
	return fmt.Sprintf("%q %s", b[:got], errnoName(err))
}

// readRest reads what is left in f and describes the result.
func readRest(f afero.File) string {
	b, err := io.ReadAll(f)
	return fmt.Sprintf("%q %s", b, errnoName(err))
}

// writeSome writes data to f and describes the result.
func writeSome(f afero.File, data []byte) string {
	n, err := f.Write(data)
	return fmt.Sprintf("%d %s", n, errnoName(err))
}

// statHandle describes what Stat on the handle f reports that a kernel
// overlay and the overlay must agree on: name, type, permissions and size
// (a directory's size is the layer's own).
func statHandle(f afero.File) string {
	fi, err := f.Stat()
	if err != nil {
		return errnoName(err)
	}
	size := fi.Size()
	if fi.IsDir() {
		size = 0
	}
	return fmt.Sprintf("%s %v %d", fi.Name(), fi.Mode()&(os.ModeType|os.ModePerm), size)
}

// listHandle lists the rest of the directory handle f, sorted (the
// kernel's order is not).
func listHandle(f afero.File) string {
	names, err := f.Readdirnames(-1)
	slices.Sort(names)
	return fmt.Sprintf("%v %s", names, errnoName(err))
}

// seekStart seeks f to its start, which rewinds a directory.
func seekStart(f afero.File) string {
	return seekTo(f, 0, io.SeekStart)
}

// seekTo seeks f and describes the result.
func seekTo(f afero.File, off int64, whence int) string {
	got, err := f.Seek(off, whence)
	return fmt.Sprintf("%d %s", got, errnoName(err))
}

// readAt reads up to 4 bytes of f at off and describes the result.
func readAt(f afero.File, off int64) string {
	b := make([]byte, 4)
	n, err := f.ReadAt(b, off)
	return fmt.Sprintf("%q %s", b[:n], errnoName(err))
}

// writeAt writes data to f at off and describes the result.
func writeAt(f afero.File, data []byte, off int64) string {
	n, err := f.WriteAt(data, off)
	return fmt.Sprintf("%d %s", n, errnoName(err))
}
