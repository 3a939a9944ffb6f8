package overlaytest

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/afero"
)

// fixture returns a MemMapFs holding the file /f ("0123456789") and the
// directory /d, wrapped in a FaultFs.
func fixture(t *testing.T) (*FaultFs, afero.Fs) {
	t.Helper()
	mem := afero.NewMemMapFs()
	if err := afero.WriteFile(mem, "/f", []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := mem.Mkdir("/d", 0o755); err != nil {
		t.Fatal(err)
	}
	return NewFaultFs(mem), mem
}

// opCalls makes one call of each kind on fsys.
var opCalls = map[Op]func(fsys afero.Fs) error{
	OpOpen: func(fsys afero.Fs) error {
		f, err := fsys.Open("/f")
		if err == nil {
			f.Close()
		}
		return err
	},
	OpRead: func(fsys afero.Fs) error {
		return withFile(fsys, func(f afero.File) error { _, err := f.Read(make([]byte, 1)); return err })
	},
	OpWrite: func(fsys afero.Fs) error {
		return withFile(fsys, func(f afero.File) error { _, err := f.Write([]byte("x")); return err })
	},
	OpClose:    func(fsys afero.Fs) error { return withFile(fsys, func(afero.File) error { return nil }) },
	OpSync:     func(fsys afero.Fs) error { return withFile(fsys, afero.File.Sync) },
	OpTruncate: func(fsys afero.Fs) error { return withFile(fsys, func(f afero.File) error { return f.Truncate(10) }) },
	OpStat:     func(fsys afero.Fs) error { _, err := fsys.Stat("/f"); return err },
	OpReaddir: func(fsys afero.Fs) error {
		f, err := fsys.Open("/d")
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.Readdirnames(-1)
		return err
	},
	OpMkdir:     func(fsys afero.Fs) error { return fsys.MkdirAll("/d/e", 0o755) },
	OpRename:    func(fsys afero.Fs) error { return fsys.Rename("/f", "/f") },
	OpRemove:    func(fsys afero.Fs) error { return ignoreNotExist(fsys.Remove("/missing")) },
	OpRemoveAll: func(fsys afero.Fs) error { return fsys.RemoveAll("/missing") },
	OpChmod:     func(fsys afero.Fs) error { return fsys.Chmod("/f", 0o644) },
	OpChown:     func(fsys afero.Fs) error { return fsys.Chown("/f", os.Getuid(), os.Getgid()) },
	OpChtimes:   func(fsys afero.Fs) error { return fsys.Chtimes("/f", time.Now(), time.Now()) },
	OpSymlink: func(fsys afero.Fs) error {
		return ignoreNoSymlink(fsys.(afero.Linker).SymlinkIfPossible("f", "/l"))
	},
	OpReadlink: func(fsys afero.Fs) error {
		_, err := fsys.(afero.LinkReader).ReadlinkIfPossible("/f")
		return ignoreNoSymlink(err)
	},
}

// withFile opens /f for reading and writing, runs do and closes it.
func withFile(fsys afero.Fs, do func(afero.File) error) error {
	f, err := fsys.OpenFile("/f", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = do(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func ignoreNotExist(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func ignoreNoSymlink(err error) error {
	if errors.Is(err, afero.ErrNoSymlink) || errors.Is(err, afero.ErrNoReadlink) {
		return nil
	}
	return err
}

func TestFaultFsFailsTheNthCall(t *testing.T) {
	for _, op := range Ops() {
		t.Run(op.String(), func(t *testing.T) {
			call := opCalls[op]
			if call == nil {
				t.Fatalf("no call for %v", op)
			}
			ffs, _ := fixture(t)
			ffs.Arm(Fault{Op: op, N: 2})
			if err := call(ffs); err != nil {
				t.Fatalf("first call = %v, want nil", err)
			}
			err := call(ffs)
			if !errors.Is(err, syscall.EIO) {
				t.Fatalf("second call = %v, want EIO", err)
			}
			var pe *fs.PathError
			var le *os.LinkError
			if !errors.As(err, &pe) && !errors.As(err, &le) {
				t.Errorf("second call = %T, want *fs.PathError or *os.LinkError", err)
			}
			if err := call(ffs); err != nil {
				t.Errorf("third call = %v, want nil", err)
			}
			if got := ffs.Calls(op); got < 3 {
				t.Errorf("Calls(%v) = %d, want at least 3", op, got)
			}
			if got := ffs.Fired(); got != 1 {
				t.Errorf("Fired() = %d, want 1", got)
			}
		})
	}
}

func TestFaultFsPersistAndCustomError(t *testing.T) {
	ffs, _ := fixture(t)
	ffs.Arm(Fault{Op: OpMkdir, N: 2, Persist: true, Err: syscall.ENOSPC})
	for i, want := range []error{nil, syscall.ENOSPC, syscall.ENOSPC} {
		if err := ffs.Mkdir("/m"+string(rune('a'+i)), 0o755); !errors.Is(err, want) && (want != nil || err != nil) {
			t.Errorf("Mkdir #%d = %v, want %v", i+1, err, want)
		}
	}
	ffs.Disarm()
	if err := ffs.Mkdir("/md", 0o755); err != nil {
		t.Errorf("Mkdir after Disarm = %v, want nil", err)
	}
	if got := ffs.Calls(OpMkdir); got != 4 {
		t.Errorf("Calls(mkdir) = %d, want 4", got)
	}
	if got := ffs.Fired(); got != 2 {
		t.Errorf("Fired() = %d, want 2", got)
	}
}

func TestFaultFsAnyFreezesTheFileSystem(t *testing.T) {
	ffs, mem := fixture(t)
	ffs.Arm(Fault{Op: OpAny, N: 3, Persist: true})
	if err := ffs.Mkdir("/a", 0o755); err != nil { // call 1
		t.Fatalf("Mkdir(/a) = %v", err)
	}
	if _, err := ffs.Stat("/a"); err != nil { // call 2
		t.Fatalf("Stat(/a) = %v", err)
	}
	if err := ffs.Mkdir("/b", 0o755); !errors.Is(err, syscall.EIO) { // call 3
		t.Errorf("Mkdir(/b) = %v, want EIO", err)
	}
	if err := ffs.Remove("/a"); !errors.Is(err, syscall.EIO) { // call 4
		t.Errorf("Remove(/a) = %v, want EIO", err)
	}
	if _, err := mem.Stat("/a"); err != nil {
		t.Errorf("Stat(/a) = %v: a call after the freeze changed the file system", err)
	}
	if got := ffs.Calls(OpAny); got != 4 {
		t.Errorf("Calls(OpAny) = %d, want 4", got)
	}
	if got := ffs.Calls(OpMkdir); got != 2 {
		t.Errorf("Calls(OpMkdir) = %d, want 2", got)
	}
}

func TestFaultFsFailedCallDoesNothing(t *testing.T) {
	ffs, mem := fixture(t)
	ffs.Arm(Fault{Op: OpRename, N: 1})
	if err := ffs.Rename("/f", "/g"); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Rename = %v, want EIO", err)
	}
	if _, err := mem.Stat("/f"); err != nil {
		t.Errorf("Stat(/f) after a failed Rename = %v, want nil", err)
	}
	ffs.Arm(Fault{Op: OpWrite, N: 1})
	if err := withFile(ffs, func(f afero.File) error { _, err := f.Write([]byte("abc")); return err }); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Write = %v, want EIO", err)
	}
	if got, _ := afero.ReadFile(mem, "/f"); string(got) != "0123456789" {
		t.Errorf("ReadFile(/f) after a failed Write = %q, want it unchanged", got)
	}
}

func TestFaultFsShortWrite(t *testing.T) {
	ffs, mem := fixture(t)
	ffs.Arm(Fault{Op: OpWrite, N: 1, Short: true, Err: syscall.ENOSPC})
	var n int
	err := withFile(ffs, func(f afero.File) (err error) {
		n, err = f.Write([]byte("abcdef"))
		return err
	})
	if n != 3 || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Write = %d, %v, want 3, ENOSPC", n, err)
	}
	if got, _ := afero.ReadFile(mem, "/f"); string(got) != "abc3456789" {
		t.Errorf("ReadFile(/f) = %q, want %q", got, "abc3456789")
	}
}

func TestFaultFsFailedCloseStillCloses(t *testing.T) {
	ffs, _ := fixture(t)
	f, err := ffs.Open("/f")
	if err != nil {
		t.Fatal(err)
	}
	ffs.Arm(Fault{Op: OpClose, N: 1})
	if err := f.Close(); !errors.Is(err, syscall.EIO) {
		t.Errorf("Close = %v, want EIO", err)
	}
	if _, err := f.Read(make([]byte, 1)); err == nil {
		t.Error("Read after a failed Close succeeded, want the file closed")
	}
}

func TestFaultFsRealPathOnlyWhenWrapped(t *testing.T) {
	dir := t.TempDir()
	base := NewFaultFs(afero.NewBasePathFs(afero.NewOsFs(), dir)).Fs()
	rp, ok := base.(interface{ RealPath(string) (string, error) })
	if !ok {
		t.Fatal("Fs() over a BasePathFs has no RealPath method")
	}
	if got, err := rp.RealPath("/a"); err != nil || !strings.HasPrefix(got, dir) {
		t.Errorf("RealPath(/a) = %q, %v, want a path under %q", got, err, dir)
	}
	mem := NewFaultFs(afero.NewMemMapFs()).Fs()
	if _, ok := mem.(interface{ RealPath(string) (string, error) }); ok {
		t.Error("Fs() over a MemMapFs has a RealPath method")
	}
	if _, ok := base.(afero.Symlinker); !ok {
		t.Error("Fs() over a BasePathFs is not an afero.Symlinker")
	}
}

func TestFaultFsSymlinksOnDisk(t *testing.T) {
	ffs := NewFaultFs(afero.NewBasePathFs(afero.NewOsFs(), t.TempDir()))
	if err := ffs.SymlinkIfPossible("target", "/l"); err != nil {
		t.Fatalf("SymlinkIfPossible = %v", err)
	}
	fi, lstated, err := ffs.LstatIfPossible("/l")
	if err != nil || !lstated || fi.Mode()&fs.ModeSymlink == 0 {
		t.Fatalf("LstatIfPossible(/l) = %v, %v, %v, want a symlink", fi, lstated, err)
	}
	if got, err := ffs.ReadlinkIfPossible("/l"); err != nil || !strings.HasSuffix(got, "target") {
		t.Errorf("ReadlinkIfPossible(/l) = %q, %v, want …target", got, err)
	}
	ffs.Arm(Fault{Op: OpStat, N: 1})
	if _, _, err := ffs.LstatIfPossible("/l"); !errors.Is(err, syscall.EIO) {
		t.Errorf("LstatIfPossible with a stat fault = %v, want EIO", err)
	}
}

func TestFaultFsOpString(t *testing.T) {
	seen := map[string]bool{}
	for _, op := range Ops() {
		s := op.String()
		if s == "" || strings.HasPrefix(s, "Op(") || seen[s] {
			t.Errorf("%d.String() = %q, want a distinct name", int(op), s)
		}
		seen[s] = true
	}
	if got := OpAny.String(); got != "any" {
		t.Errorf("OpAny.String() = %q, want any", got)
	}
	if got := Op(99).String(); got != "Op(99)" {
		t.Errorf("Op(99).String() = %q, want Op(99)", got)
	}
}

func TestSnapshotAndDiff(t *testing.T) {
	mem := afero.NewMemMapFs()
	if err := afero.WriteFile(mem, "/d/f", []byte("data"), 0o640); err != nil {
		t.Fatal(err)
	}
	tree, err := Snapshot(mem, "/")
	if err != nil {
		t.Fatal(err)
	}
	if got := tree["d/f"]; got.Data != "data" || got.Mode != 0o640 {
		t.Errorf("tree[d/f] = %v, want file 0640 \"data\"", got)
	}
	if got := tree["d"]; !got.Mode.IsDir() {
		t.Errorf("tree[d] = %v, want a directory", got)
	}
	if _, ok := tree["."]; !ok {
		t.Error("tree has no root")
	}
	if d := Diff(tree, tree); d != "" {
		t.Errorf("Diff(tree, tree) = %q, want empty", d)
	}
	if err := afero.WriteFile(mem, "/d/f", []byte("datA"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := mem.Remove("/d/f"); err != nil {
		t.Fatal(err)
	}
	other, err := Snapshot(mem, "/")
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(tree, other); !strings.Contains(d, "d/f: missing") {
		t.Errorf("Diff after removing d/f = %q, want it to say d/f is missing", d)
	}
	ffs := NewFaultFs(mem)
	ffs.Arm(Fault{Op: OpReaddir, N: 1})
	if _, err := Snapshot(ffs, "/"); !errors.Is(err, syscall.EIO) {
		t.Errorf("Snapshot with a failing listing = %v, want EIO", err)
	}
}
