package overlay

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/afero"
	"golang.org/x/sys/unix"
)

// fsOpKind names one operation of the vocabulary shared by the kernel tests
// and the fuzz target.
type fsOpKind uint8

// The operations. Their numeric values are part of the fuzz corpus
// encoding: append new ones before fopCount, never reorder.
const (
	fopWriteFile fsOpKind = iota
	fopAppend
	fopOpenFile
	fopReadFile
	fopStat
	fopLstat
	fopMkdir
	fopMkdirAll
	fopRemove
	fopRemoveAll
	fopRename
	fopChmod
	fopChtimes
	fopSymlink
	fopReadlink
	fopReadDirNames
	fopTruncate
	fopReadHandleFollows
	fopChown
	fopCount
)

// fsOpNames holds the operations' names, indexed by kind.
var fsOpNames = [fopCount]string{
	"WriteFile", "Append", "OpenFile", "ReadFile", "Stat", "Lstat", "Mkdir",
	"MkdirAll", "Remove", "RemoveAll", "Rename", "Chmod", "Chtimes",
	"Symlink", "Readlink", "ReadDirNames", "Truncate", "ReadHandleFollows",
	"Chown",
}

// String returns the operation's name.
func (k fsOpKind) String() string {
	if k < fopCount {
		return fsOpNames[k]
	}
	return fmt.Sprintf("fsOpKind(%d)", uint8(k))
}

// fsOp is one operation with its operands. Path is the name operated on
// (for Symlink, the link's name); Path2 is Rename's new name; Data is the
// content written or Symlink's target; Mode is the permission of Mkdir,
// MkdirAll, Chmod and of files created by WriteFile and OpenFile; Flag holds
// OpenFile's flags; Size is Truncate's length, and for Chtimes which time
// is given as zero, to be left as it is (0 neither, 1 atime, 2 mtime).
type fsOp struct {
	Kind  fsOpKind
	Path  string
	Path2 string
	Data  string
	Mode  fs.FileMode
	Flag  int
	Size  int64
	Owner int // Chown's uid and gid (the same)
}

// chtimesTime is the atime and mtime every Chtimes sets. It is not recent,
// so checkSameTree requires it exactly.
var chtimesTime = time.Date(2010, 5, 5, 0, 0, 0, 0, time.UTC)

// Operand pools. Paths are few and overlap the layer fixtures so that
// operations collide often. None of them starts with ".wh.", which the
// overlay reserves. Symlink targets are relative and never climb above the
// link's own directory, so no target leaves the tree on the kernel side.
// Like fsOpKind, the pools' orders are part of the corpus encoding.
var (
	poolPaths = []string{"a", "b", "c", "d", "x", "a/b", "a/c", "b/a", "d/e",
		"d/x", "d/y", "d/e/f", "c/n", "c/old"}
	poolContents = []string{"x", "hello", "", "new content", "0123456789abcdef"}
	poolModes    = []fs.FileMode{0o644, 0o600, 0o755, 0o700, 0o750, 0o711, 0o000,
		0o755 | fs.ModeSetuid, 0o775 | fs.ModeSetgid, 0o777 | fs.ModeSticky}
	poolFlags = []int{
		os.O_RDONLY,
		os.O_RDWR,
		os.O_WRONLY | os.O_TRUNC,
		os.O_RDONLY | os.O_TRUNC,
		os.O_CREATE | os.O_EXCL | os.O_WRONLY,
		os.O_CREATE | os.O_WRONLY,
	}
	poolTargets = []string{"a", "b", "d/e", "missing", "../a", "x"}
	poolSizes   = []int64{0, 1, 3, 20}
	poolOwners  = []int{0, 1000}
)

// openFlagNames renders OpenFile flags.
func openFlagNames(flag int) string {
	var parts []string
	switch flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR) {
	case os.O_RDONLY:
		parts = append(parts, "O_RDONLY")
	case os.O_WRONLY:
		parts = append(parts, "O_WRONLY")
	default:
		parts = append(parts, "O_RDWR")
	}
	for _, f := range []struct {
		bit  int
		name string
	}{{os.O_CREATE, "O_CREATE"}, {os.O_EXCL, "O_EXCL"}, {os.O_TRUNC, "O_TRUNC"}, {os.O_APPEND, "O_APPEND"}} {
		if flag&f.bit != 0 {
			parts = append(parts, f.name)
		}
	}
	return strings.Join(parts, "|")
}

// String renders o as Go-like call syntax.
func (o fsOp) String() string {
	switch o.Kind {
	case fopWriteFile:
		return fmt.Sprintf("WriteFile(%q, %q, %s)", o.Path, o.Data, permOctal(o.Mode))
	case fopAppend:
		return fmt.Sprintf("Append(%q, %q)", o.Path, o.Data)
	case fopOpenFile:
		s := fmt.Sprintf("OpenFile(%q, %s, %s)", o.Path, openFlagNames(o.Flag), permOctal(o.Mode))
		if o.Data != "" {
			s += fmt.Sprintf(" + Write(%q)", o.Data)
		}
		return s
	case fopMkdir, fopMkdirAll, fopChmod:
		return fmt.Sprintf("%s(%q, %s)", o.Kind, o.Path, permOctal(o.Mode))
	case fopRename:
		return fmt.Sprintf("Rename(%q, %q)", o.Path, o.Path2)
	case fopSymlink:
		return fmt.Sprintf("Symlink(%q, %q)", o.Data, o.Path)
	case fopTruncate:
		return fmt.Sprintf("Truncate(%q, %d)", o.Path, o.Size)
	case fopChown:
		return fmt.Sprintf("Chown(%q, %d, %d)", o.Path, o.Owner, o.Owner)
	case fopChtimes:
		return fmt.Sprintf("Chtimes(%q, %s)", o.Path, [...]string{"both", "mtime only", "atime only"}[o.Size%3])
	}
	return fmt.Sprintf("%s(%q)", o.Kind, o.Path)
}

// opResult is the comparable outcome of an operation: the errno it failed
// with (0 on success) and the data it produced.
type opResult struct {
	Errno syscall.Errno
	Data  string
}

// String renders r as "ok", "ok: DATA" or the errno's name ("ENOENT").
func (r opResult) String() string {
	if r.Errno != 0 {
		if name := unix.ErrnoName(r.Errno); name != "" {
			return name
		}
		return fmt.Sprintf("errno %d", int(r.Errno))
	}
	if r.Data == "" {
		return "ok"
	}
	return "ok: " + r.Data
}

// resultOf turns data and an error into an opResult. An error that carries
// no syscall.Errno cannot be compared with the kernel and is returned as a
// harness error.
func resultOf(data string, err error) (opResult, error) {
	if err == nil {
		return opResult{Data: data}, nil
	}
	var errno syscall.Errno
	if errors.As(err, &errno) && errno != 0 {
		return opResult{Errno: errno}, nil
	}
	return opResult{}, fmt.Errorf("error without a syscall.Errno (%T): %v", err, err)
}

// closeWith closes f and returns the first of err and the close error.
func closeWith(f afero.File, err error) error {
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// describeInfo renders the result of Stat and Lstat: type and permission
// bits, plus the size of regular files.
func describeInfo(fi os.FileInfo) string {
	s := fmt.Sprintf("%s %04o", fileTypeName(fi.Mode()), unixPermBits(fi.Mode()))
	if fi.Mode().IsRegular() {
		s += fmt.Sprintf(" size=%d", fi.Size())
	}
	return s
}

// applyOp runs o on fsys. Oracles pass sortListing so that ReadDirNames
// sorts their listing; the overlay promises sorted order, so its listing is
// compared raw. The error return is reserved for harness failures such as an
// error without an errno.
func applyOp(fsys afero.Fs, o fsOp, sortListing bool) (opResult, error) {
	switch o.Kind {
	case fopWriteFile, fopAppend, fopOpenFile:
		flag := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		if o.Kind == fopAppend {
			flag = os.O_WRONLY | os.O_APPEND
		} else if o.Kind == fopOpenFile {
			flag = o.Flag
		}
		f, err := fsys.OpenFile(o.Path, flag, o.Mode)
		if err != nil {
			return resultOf("", err)
		}
		if o.Data != "" {
			_, err = f.WriteString(o.Data)
		}
		return resultOf("", closeWith(f, err))
	case fopReadFile:
		s, err := readWhole(fsys, o.Path)
		if err != nil {
			s = ""
		}
		return resultOf(s, err)
	case fopStat, fopLstat:
		stat := fsys.Stat
		if o.Kind == fopLstat {
			stat = func(name string) (os.FileInfo, error) { return lstatAny(fsys, name) }
		}
		fi, err := stat(o.Path)
		if err != nil {
			return resultOf("", err)
		}
		return resultOf(describeInfo(fi), nil)
	case fopMkdir:
		return resultOf("", fsys.Mkdir(o.Path, o.Mode))
	case fopMkdirAll:
		return resultOf("", fsys.MkdirAll(o.Path, o.Mode))
	case fopRemove:
		return resultOf("", fsys.Remove(o.Path))
	case fopRemoveAll:
		return resultOf("", fsys.RemoveAll(o.Path))
	case fopRename:
		return resultOf("", fsys.Rename(o.Path, o.Path2))
	case fopChmod:
		return resultOf("", fsys.Chmod(o.Path, o.Mode))
	case fopChtimes:
		atime, mtime := chtimesTime, chtimesTime
		switch o.Size { // which time is left as it is: a zero time
		case 1:
			atime = time.Time{}
		case 2:
			mtime = time.Time{}
		}
		return resultOf("", fsys.Chtimes(o.Path, atime, mtime))
	case fopSymlink:
		l, ok := fsys.(afero.Linker)
		if !ok {
			return opResult{}, fmt.Errorf("%T does not implement afero.Linker", fsys)
		}
		return resultOf("", l.SymlinkIfPossible(o.Data, o.Path))
	case fopReadlink:
		s, err := readlinkAny(fsys, o.Path)
		return resultOf(s, err)
	case fopReadDirNames:
		names, err := listDirNames(fsys, o.Path)
		if err != nil {
			return resultOf("", err)
		}
		if sortListing {
			sort.Strings(names)
		}
		return resultOf(strings.Join(names, " "), nil)
	case fopTruncate:
		f, err := fsys.OpenFile(o.Path, os.O_RDWR, 0)
		if err != nil {
			return resultOf("", err)
		}
		return resultOf("", closeWith(f, f.Truncate(o.Size)))
	case fopReadHandleFollows:
		return readHandleFollows(fsys, o.Path)
	case fopChown:
		return resultOf("", fsys.Chown(o.Path, o.Owner, o.Owner))
	}
	return opResult{}, fmt.Errorf("unknown operation %v", o.Kind)
}

// readHandleFollows opens name read-only and reads one byte, writes "ZZ" at
// offset 0 through a second, read-write handle (which copies a lower file
// up), then reads the rest through the first handle. The kernel's first
// handle sees the new data; the result is "FIRST|REST".
func readHandleFollows(fsys afero.Fs, name string) (opResult, error) {
	f1, err := fsys.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return resultOf("", err)
	}
	defer f1.Close()
	first := make([]byte, 1)
	n, err := f1.Read(first)
	if err != nil && err != io.EOF {
		return resultOf("", err)
	}
	f2, err := fsys.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return resultOf("", err)
	}
	_, err = f2.WriteAt([]byte("ZZ"), 0)
	if err = closeWith(f2, err); err != nil {
		return resultOf("", err)
	}
	rest, err := io.ReadAll(f1)
	if err != nil {
		return resultOf("", err)
	}
	return resultOf(string(first[:n])+"|"+string(rest), nil)
}

// doWrite returns a WriteFile operation creating or truncating p with mode.
func doWrite(p, data string, mode fs.FileMode) fsOp {
	return fsOp{Kind: fopWriteFile, Path: p, Data: data, Mode: mode}
}

// doAppend returns an Append operation (O_WRONLY|O_APPEND, no O_CREATE).
func doAppend(p, data string) fsOp { return fsOp{Kind: fopAppend, Path: p, Data: data} }

// doOpen returns an OpenFile operation with flag and mode 0644 that writes
// data when it is not empty.
func doOpen(p string, flag int, data string) fsOp {
	return fsOp{Kind: fopOpenFile, Path: p, Flag: flag, Data: data, Mode: 0o644}
}

// doRead returns a ReadFile operation.
func doRead(p string) fsOp { return fsOp{Kind: fopReadFile, Path: p} }

// doStat returns a Stat operation.
func doStat(p string) fsOp { return fsOp{Kind: fopStat, Path: p} }

// doLstat returns an Lstat operation.
func doLstat(p string) fsOp { return fsOp{Kind: fopLstat, Path: p} }

// doMkdir returns a Mkdir operation.
func doMkdir(p string, mode fs.FileMode) fsOp { return fsOp{Kind: fopMkdir, Path: p, Mode: mode} }

// doMkdirAll returns a MkdirAll operation.
func doMkdirAll(p string, mode fs.FileMode) fsOp {
	return fsOp{Kind: fopMkdirAll, Path: p, Mode: mode}
}

// doRemove returns a Remove operation.
func doRemove(p string) fsOp { return fsOp{Kind: fopRemove, Path: p} }

// doRemoveAll returns a RemoveAll operation.
func doRemoveAll(p string) fsOp { return fsOp{Kind: fopRemoveAll, Path: p} }

// doRename returns a Rename operation.
func doRename(from, to string) fsOp { return fsOp{Kind: fopRename, Path: from, Path2: to} }

// doChmod returns a Chmod operation.
func doChmod(p string, mode fs.FileMode) fsOp { return fsOp{Kind: fopChmod, Path: p, Mode: mode} }

// doChtimes returns a Chtimes operation setting chtimesTime.
func doChtimes(p string) fsOp { return fsOp{Kind: fopChtimes, Path: p} }

// doSymlink returns a Symlink operation creating name pointing at target.
func doSymlink(target, name string) fsOp { return fsOp{Kind: fopSymlink, Path: name, Data: target} }

// doReadlink returns a Readlink operation.
func doReadlink(p string) fsOp { return fsOp{Kind: fopReadlink, Path: p} }

// doReadDirNames returns a ReadDirNames operation.
func doReadDirNames(p string) fsOp { return fsOp{Kind: fopReadDirNames, Path: p} }

// doTruncate returns a Truncate operation through a read-write handle.
func doTruncate(p string, size int64) fsOp { return fsOp{Kind: fopTruncate, Path: p, Size: size} }

// doReadHandleFollows returns a ReadHandleFollows operation.
func doReadHandleFollows(p string) fsOp { return fsOp{Kind: fopReadHandleFollows, Path: p} }

// opBytes is the size of one encoded operation: kind, path, and two operand
// bytes whose meaning depends on the kind.
const opBytes = 4

// decodeFsOp decodes one operation from b (opBytes long). Every input decodes
// to a valid operation: indices wrap around their pools.
func decodeFsOp(b []byte) fsOp {
	pick := func(n int, i byte) int { return int(i) % n }
	o := fsOp{Kind: fsOpKind(int(b[0]) % int(fopCount)), Path: poolPaths[pick(len(poolPaths), b[1])]}
	a, c := b[2], b[3]
	switch o.Kind {
	case fopWriteFile:
		o.Data, o.Mode = poolContents[pick(len(poolContents), a)], poolModes[pick(len(poolModes), c)]
	case fopAppend:
		o.Data = poolContents[pick(len(poolContents), a)]
	case fopOpenFile:
		o.Flag = poolFlags[pick(len(poolFlags), a)]
		o.Data = poolContents[pick(len(poolContents), c&0x0f)]
		o.Mode = poolModes[pick(len(poolModes), c>>4)]
	case fopMkdir, fopMkdirAll, fopChmod:
		o.Mode = poolModes[pick(len(poolModes), c)]
	case fopRename:
		o.Path2 = poolPaths[pick(len(poolPaths), a)]
	case fopSymlink:
		o.Data = poolTargets[pick(len(poolTargets), a)]
		if strings.HasPrefix(o.Data, "..") && !strings.Contains(o.Path, "/") {
			// A top-level link must not climb out of the tree.
			o.Data = poolTargets[0]
		}
	case fopReadDirNames:
		if a&1 == 1 {
			o.Path = "/"
		}
	case fopTruncate:
		o.Size = poolSizes[pick(len(poolSizes), a)]
	case fopChown:
		o.Owner = poolOwners[pick(len(poolOwners), a)]
	case fopChtimes:
		o.Size = int64(pick(3, a))
	}
	return o
}

// maxScriptOps bounds the length of a decoded script.
const maxScriptOps = 64

// decodeScript decodes an operation script; trailing bytes that do not make
// a whole operation are ignored, and so are operations past maxScriptOps.
func decodeScript(b []byte) []fsOp {
	var ops []fsOp
	for len(b) >= opBytes && len(ops) < maxScriptOps {
		ops = append(ops, decodeFsOp(b[:opBytes]))
		b = b[opBytes:]
	}
	return ops
}

// encodeScript encodes ops so that decodeScript returns them again. It fails
// for operands outside the pools.
func encodeScript(ops []fsOp) ([]byte, error) {
	out := make([]byte, 0, len(ops)*opBytes)
	for _, o := range ops {
		b, err := encodeFsOp(o)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

// encodeFsOp encodes one operation.
func encodeFsOp(o fsOp) ([]byte, error) {
	var bad error
	index := func(what string, n int, eq func(int) bool) byte {
		for i := 0; i < n; i++ {
			if eq(i) {
				return byte(i)
			}
		}
		if bad == nil {
			bad = fmt.Errorf("encode %v: %s not in its pool", o, what)
		}
		return 0
	}
	pathIdx := func(p string) byte {
		return index("path "+p, len(poolPaths), func(i int) bool { return poolPaths[i] == p })
	}
	content := func() byte {
		return index("content", len(poolContents), func(i int) bool { return poolContents[i] == o.Data })
	}
	mode := func() byte {
		return index("mode", len(poolModes), func(i int) bool { return poolModes[i] == o.Mode })
	}
	b := []byte{byte(o.Kind), 0, 0, 0}
	if o.Kind >= fopCount {
		return nil, fmt.Errorf("encode: unknown operation %v", o.Kind)
	}
	if !(o.Kind == fopReadDirNames && o.Path == "/") {
		b[1] = pathIdx(o.Path)
	}
	switch o.Kind {
	case fopWriteFile:
		b[2], b[3] = content(), mode()
	case fopAppend:
		b[2] = content()
	case fopOpenFile:
		b[2] = index("flags", len(poolFlags), func(i int) bool { return poolFlags[i] == o.Flag })
		b[3] = content() | mode()<<4
	case fopMkdir, fopMkdirAll, fopChmod:
		b[3] = mode()
	case fopRename:
		b[2] = pathIdx(o.Path2)
	case fopSymlink:
		b[2] = index("target", len(poolTargets), func(i int) bool { return poolTargets[i] == o.Data })
		if strings.HasPrefix(o.Data, "..") && !strings.Contains(o.Path, "/") {
			return nil, fmt.Errorf("encode %v: a top-level link must not climb out of the tree", o)
		}
	case fopReadDirNames:
		if o.Path == "/" {
			b[2] = 1
		}
	case fopTruncate:
		b[2] = index("size", len(poolSizes), func(i int) bool { return poolSizes[i] == o.Size })
	case fopChown:
		b[2] = index("owner", len(poolOwners), func(i int) bool { return poolOwners[i] == o.Owner })
	case fopChtimes:
		b[2] = byte(o.Size)
	}
	if bad != nil {
		return nil, bad
	}
	return b, nil
}
