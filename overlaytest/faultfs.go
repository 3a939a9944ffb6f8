// Package overlaytest holds test helpers for code built on afero file
// systems: [FaultFs], which makes a chosen call fail, and [Snapshot], which
// captures a whole tree so that two states can be compared.
//
// It depends on afero and the standard library only, so any package's
// tests, the overlay's own internal tests included, can import it.
package overlaytest

import (
	"fmt"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/afero"
)

// Op is a kind of call that a [FaultFs] counts and can make fail.
type Op int

// The kinds of calls. Each method of the file system and of its files
// belongs to one kind; OpAny stands for all of them.
const (
	OpAny       Op = iota // every call, counted together
	OpOpen                // Fs.Open, Fs.OpenFile, Fs.Create
	OpRead                // File.Read, File.ReadAt
	OpWrite               // File.Write, File.WriteAt, File.WriteString
	OpClose               // File.Close
	OpSync                // File.Sync
	OpTruncate            // File.Truncate
	OpStat                // Fs.Stat, LstatIfPossible, File.Stat
	OpReaddir             // File.Readdir, File.Readdirnames
	OpMkdir               // Fs.Mkdir, Fs.MkdirAll
	OpRename              // Fs.Rename
	OpRemove              // Fs.Remove
	OpRemoveAll           // Fs.RemoveAll
	OpChmod               // Fs.Chmod
	OpChown               // Fs.Chown
	OpChtimes             // Fs.Chtimes
	OpSymlink             // SymlinkIfPossible
	OpReadlink            // ReadlinkIfPossible
	numOps
)

var opNames = [numOps]string{"any", "open", "read", "write", "close", "sync", "truncate", "stat",
	"readdir", "mkdir", "rename", "remove", "removeall", "chmod", "chown", "chtimes", "symlink", "readlink"}

// String returns the kind's name, such as "rename".
func (op Op) String() string {
	if op < 0 || op >= numOps {
		return fmt.Sprintf("Op(%d)", int(op))
	}
	return opNames[op]
}

// Ops returns every kind of call, in the order of their constants, without
// OpAny.
func Ops() []Op {
	ops := make([]Op, 0, numOps-1)
	for op := OpOpen; op < numOps; op++ {
		ops = append(ops, op)
	}
	return ops
}

// Fault describes which call a [FaultFs] fails and how.
type Fault struct {
	// Op is the kind of call to fail. With OpAny, N counts calls of
	// every kind, and Persist then makes the whole file system fail from
	// the N-th call on: the state it keeps is the state a crash at that
	// call would leave.
	Op Op
	// N is the call of kind Op to fail, counting from 1 since Arm. Zero
	// fails nothing: the FaultFs only counts.
	N int
	// Err is the error the failed call returns, wrapped in an
	// *fs.PathError (*os.LinkError for Rename and SymlinkIfPossible) as
	// the os package would. Nil means syscall.EIO.
	Err error
	// Persist fails every call of kind Op from the N-th on, as a failing
	// disk does, instead of the N-th only.
	Persist bool
	// Short, for OpWrite, makes the failed write store the first half of
	// its bytes before it returns Err: a short write.
	Short bool
}

// FaultFs is an afero.Fs that passes every call to the file system it wraps
// and makes the call chosen by [FaultFs.Arm] fail instead. A failed call
// does nothing, except File.Close, which still closes the wrapped file (the
// descriptor is gone on Linux even when close reports an error), and a
// short write (see [Fault]).
//
// FaultFs implements afero.Lstater and afero.Symlinker, falling back as
// afero's own wrappers do where the wrapped file system lacks them. Give
// code under test the file system that [FaultFs.Fs] returns: it also has
// the wrapped file system's RealPath method, if that has one.
//
// A FaultFs is safe for concurrent use if the wrapped file system is.
type FaultFs struct {
	fs afero.Fs

	mu    sync.Mutex // guards the fields below
	fault Fault
	calls [numOps]int // calls of each kind since the last Arm
	fired int         // calls failed since the last Arm
}

var (
	_ afero.Fs        = (*FaultFs)(nil)
	_ afero.Lstater   = (*FaultFs)(nil)
	_ afero.Symlinker = (*FaultFs)(nil)
)

// NewFaultFs returns a FaultFs over fsys that fails nothing until armed.
func NewFaultFs(fsys afero.Fs) *FaultFs {
	return &FaultFs{fs: fsys}
}

// realPather is the method afero.BasePathFs has to map a name to its host
// path.
type realPather interface {
	RealPath(name string) (string, error)
}

// realPathFaultFs is a FaultFs that also forwards RealPath.
type realPathFaultFs struct {
	*FaultFs
	rp realPather
}

// RealPath returns the wrapped file system's host path for name. It is
// never made to fail.
func (f realPathFaultFs) RealPath(name string) (string, error) {
	return f.rp.RealPath(name)
}

// Fs returns f as the file system to give the code under test: f itself,
// or, where the wrapped file system has a RealPath method, f with that
// method too, so that the code takes the same paths it would take without
// f. Calls that code makes to the host path directly are not counted.
func (f *FaultFs) Fs() afero.Fs {
	if rp, ok := f.fs.(realPather); ok {
		return realPathFaultFs{FaultFs: f, rp: rp}
	}
	return f
}

// Arm resets the counts and makes the call that fault describes fail.
// Arm(Fault{}) only resets the counts.
func (f *FaultFs) Arm(fault Fault) {
	if fault.Err == nil {
		fault.Err = syscall.EIO
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault = fault
	f.calls = [numOps]int{}
	f.fired = 0
}

// Disarm stops failing calls. The counts go on.
func (f *FaultFs) Disarm() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault.N = 0
}

// Calls returns how many calls of kind op (of any kind for OpAny) were
// made since the last Arm, failed ones included.
func (f *FaultFs) Calls(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if op < 0 || op >= numOps {
		return 0
	}
	return f.calls[op]
}

// Fired returns how many calls failed since the last Arm.
func (f *FaultFs) Fired() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fired
}

// hit counts a call of kind op and returns whether the failure is a short
// write and the error the call must fail with, or nil.
func (f *FaultFs) hit(op Op) (short bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	f.calls[OpAny]++
	ft := f.fault
	if ft.Op != OpAny && ft.Op != op {
		return false, nil
	}
	n := f.calls[ft.Op]
	if ft.N <= 0 || n < ft.N || (n > ft.N && !ft.Persist) {
		return false, nil
	}
	f.fired++
	return ft.Short && op == OpWrite, ft.Err
}

// check counts a call of kind op on name and returns the *fs.PathError it
// must fail with, or nil.
func (f *FaultFs) check(op Op, opName, name string) error {
	if _, err := f.hit(op); err != nil {
		return &fs.PathError{Op: opName, Path: name, Err: err}
	}
	return nil
}

// Name returns "FaultFs(" and the wrapped file system's name and ")".
func (f *FaultFs) Name() string { return "FaultFs(" + f.fs.Name() + ")" }

// Create creates name as the wrapped file system does; it is an OpOpen call.
func (f *FaultFs) Create(name string) (afero.File, error) {
	if err := f.check(OpOpen, "open", name); err != nil {
		return nil, err
	}
	return f.wrapFile(f.fs.Create(name))
}

// Open opens name for reading; it is an OpOpen call.
func (f *FaultFs) Open(name string) (afero.File, error) {
	if err := f.check(OpOpen, "open", name); err != nil {
		return nil, err
	}
	return f.wrapFile(f.fs.Open(name))
}

// OpenFile opens name with flag and perm; it is an OpOpen call.
func (f *FaultFs) OpenFile(name string, flag int, perm os.FileMode) (afero.File, error) {
	if err := f.check(OpOpen, "open", name); err != nil {
		return nil, err
	}
	return f.wrapFile(f.fs.OpenFile(name, flag, perm))
}

// wrapFile wraps a file the wrapped file system opened.
func (f *FaultFs) wrapFile(lf afero.File, err error) (afero.File, error) {
	if err != nil {
		return nil, err
	}
	return &faultFile{File: lf, fs: f}, nil
}

// Mkdir creates the directory name; it is an OpMkdir call.
func (f *FaultFs) Mkdir(name string, perm os.FileMode) error {
	if err := f.check(OpMkdir, "mkdir", name); err != nil {
		return err
	}
	return f.fs.Mkdir(name, perm)
}

// MkdirAll creates the directory name and its parents; it is one OpMkdir
// call.
func (f *FaultFs) MkdirAll(name string, perm os.FileMode) error {
	if err := f.check(OpMkdir, "mkdir", name); err != nil {
		return err
	}
	return f.fs.MkdirAll(name, perm)
}

// Remove removes name; it is an OpRemove call.
func (f *FaultFs) Remove(name string) error {
	if err := f.check(OpRemove, "remove", name); err != nil {
		return err
	}
	return f.fs.Remove(name)
}

// RemoveAll removes name and its contents; it is an OpRemoveAll call.
func (f *FaultFs) RemoveAll(name string) error {
	if err := f.check(OpRemoveAll, "unlinkat", name); err != nil {
		return err
	}
	return f.fs.RemoveAll(name)
}

// Rename renames oldname to newname; it is an OpRename call, and fails
// with an *os.LinkError.
func (f *FaultFs) Rename(oldname, newname string) error {
	if _, err := f.hit(OpRename); err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	return f.fs.Rename(oldname, newname)
}

// Stat describes name; it is an OpStat call.
func (f *FaultFs) Stat(name string) (os.FileInfo, error) {
	if err := f.check(OpStat, "stat", name); err != nil {
		return nil, err
	}
	return f.fs.Stat(name)
}

// LstatIfPossible describes name without following a final symlink where
// the wrapped file system can, and as Stat does elsewhere (reporting
// false); it is an OpStat call.
func (f *FaultFs) LstatIfPossible(name string) (os.FileInfo, bool, error) {
	if err := f.check(OpStat, "lstat", name); err != nil {
		return nil, false, err
	}
	if ls, ok := f.fs.(afero.Lstater); ok {
		return ls.LstatIfPossible(name)
	}
	fi, err := f.fs.Stat(name)
	return fi, false, err
}

// Chmod changes the mode of name; it is an OpChmod call.
func (f *FaultFs) Chmod(name string, mode os.FileMode) error {
	if err := f.check(OpChmod, "chmod", name); err != nil {
		return err
	}
	return f.fs.Chmod(name, mode)
}

// Chown changes the owner of name; it is an OpChown call.
func (f *FaultFs) Chown(name string, uid, gid int) error {
	if err := f.check(OpChown, "chown", name); err != nil {
		return err
	}
	return f.fs.Chown(name, uid, gid)
}

// Chtimes changes the times of name; it is an OpChtimes call.
func (f *FaultFs) Chtimes(name string, atime, mtime time.Time) error {
	if err := f.check(OpChtimes, "chtimes", name); err != nil {
		return err
	}
	return f.fs.Chtimes(name, atime, mtime)
}

// SymlinkIfPossible creates newname as a symlink to oldname where the
// wrapped file system can, and fails with afero.ErrNoSymlink elsewhere; it
// is an OpSymlink call, and fails with an *os.LinkError.
func (f *FaultFs) SymlinkIfPossible(oldname, newname string) error {
	if _, err := f.hit(OpSymlink); err != nil {
		return &os.LinkError{Op: "symlink", Old: oldname, New: newname, Err: err}
	}
	if l, ok := f.fs.(afero.Linker); ok {
		return l.SymlinkIfPossible(oldname, newname)
	}
	return &os.LinkError{Op: "symlink", Old: oldname, New: newname, Err: afero.ErrNoSymlink}
}

// ReadlinkIfPossible returns the target of the symlink name where the
// wrapped file system can, and fails with afero.ErrNoReadlink elsewhere; it
// is an OpReadlink call.
func (f *FaultFs) ReadlinkIfPossible(name string) (string, error) {
	if err := f.check(OpReadlink, "readlink", name); err != nil {
		return "", err
	}
	if r, ok := f.fs.(afero.LinkReader); ok {
		return r.ReadlinkIfPossible(name)
	}
	return "", &fs.PathError{Op: "readlink", Path: name, Err: afero.ErrNoReadlink}
}

// faultFile is a file opened through a FaultFs.
type faultFile struct {
	afero.File
	fs *FaultFs
}

func (f *faultFile) check(op Op, opName string) error {
	return f.fs.check(op, opName, f.Name())
}

// Read reads from the file; it is an OpRead call.
func (f *faultFile) Read(p []byte) (int, error) {
	if err := f.check(OpRead, "read"); err != nil {
		return 0, err
	}
	return f.File.Read(p)
}

// ReadAt reads from the file at off; it is an OpRead call.
func (f *faultFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.check(OpRead, "read"); err != nil {
		return 0, err
	}
	return f.File.ReadAt(p, off)
}

// Write writes to the file; it is an OpWrite call.
func (f *faultFile) Write(p []byte) (int, error) {
	short, err := f.fs.hit(OpWrite)
	switch {
	case err == nil:
		return f.File.Write(p)
	case short:
		n, _ := f.File.Write(p[:len(p)/2]) // the fault's error is what counts
		return n, &fs.PathError{Op: "write", Path: f.Name(), Err: err}
	}
	return 0, &fs.PathError{Op: "write", Path: f.Name(), Err: err}
}

// WriteAt writes to the file at off; it is an OpWrite call.
func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	short, err := f.fs.hit(OpWrite)
	switch {
	case err == nil:
		return f.File.WriteAt(p, off)
	case short:
		n, _ := f.File.WriteAt(p[:len(p)/2], off) // the fault's error is what counts
		return n, &fs.PathError{Op: "write", Path: f.Name(), Err: err}
	}
	return 0, &fs.PathError{Op: "write", Path: f.Name(), Err: err}
}

// WriteString writes s to the file; it is an OpWrite call.
func (f *faultFile) WriteString(s string) (int, error) {
	return f.Write([]byte(s))
}

// Close closes the file; it is an OpClose call. A failed Close still
// closes the wrapped file.
func (f *faultFile) Close() error {
	ferr := f.check(OpClose, "close")
	err := f.File.Close()
	if ferr != nil {
		return ferr
	}
	return err
}

// Sync commits the file; it is an OpSync call.
func (f *faultFile) Sync() error {
	if err := f.check(OpSync, "sync"); err != nil {
		return err
	}
	return f.File.Sync()
}

// Truncate changes the file's size; it is an OpTruncate call.
func (f *faultFile) Truncate(size int64) error {
	if err := f.check(OpTruncate, "truncate"); err != nil {
		return err
	}
	return f.File.Truncate(size)
}

// Stat describes the file; it is an OpStat call.
func (f *faultFile) Stat() (os.FileInfo, error) {
	if err := f.check(OpStat, "stat"); err != nil {
		return nil, err
	}
	return f.File.Stat()
}

// Readdir lists the directory; it is an OpReaddir call.
func (f *faultFile) Readdir(n int) ([]os.FileInfo, error) {
	if err := f.check(OpReaddir, "readdirent"); err != nil {
		return nil, err
	}
	return f.File.Readdir(n)
}

// Readdirnames lists the directory's names; it is an OpReaddir call.
func (f *faultFile) Readdirnames(n int) ([]string, error) {
	if err := f.check(OpReaddir, "readdirent"); err != nil {
		return nil, err
	}
	return f.File.Readdirnames(n)
}
