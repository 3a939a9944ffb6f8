package overlay

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/spf13/afero"
	"github.com/stackfs/overlay/overlaytest"
)

// timedLayer returns a read-only lower where every entry has lowerTime.
// Directories get mode 0755 unless dirModes says otherwise.
func timedLayer(files map[string]string, dirModes map[string]fs.FileMode) afero.Fs {
	m := fstest.MapFS{}
	for name, data := range files {
		m[name] = &fstest.MapFile{Data: []byte(data), Mode: 0o640, ModTime: lowerTime}
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			m[d] = &fstest.MapFile{Mode: fs.ModeDir | 0o755, ModTime: lowerTime}
		}
	}
	for name, mode := range dirModes {
		m[name] = &fstest.MapFile{Mode: fs.ModeDir | mode, ModTime: lowerTime}
	}
	return mapLayer(m)
}

func TestCopyUpKeepsAttributes(t *testing.T) {
	lower := timedLayer(map[string]string{"a/b/c/f": "lower"},
		map[string]fs.FileMode{"a": 0o750, "a/b": 0o711, "a/b/c": 0o700})
	o, upper := newOverlay(t, lower)
	f, err := o.OpenFile("a/b/c/f", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readString(upper, "/a/b/c/f"); got != "lower" {
		t.Errorf("upper a/b/c/f = %q, want the lower content", got)
	}
	for name, mode := range map[string]fs.FileMode{"a": fs.ModeDir | 0o750, "a/b": fs.ModeDir | 0o711, "a/b/c": fs.ModeDir | 0o700, "a/b/c/f": 0o640} {
		fi, err := upper.Stat("/" + name)
		if err != nil {
			t.Fatalf("upper Stat(%q): %v", name, err)
		}
		if fi.Mode() != mode || !fi.ModTime().Equal(lowerTime) {
			t.Errorf("upper %s: mode %v, mtime %v; want %v, %v", name, fi.Mode(), fi.ModTime(), mode, lowerTime)
		}
		mfi, err := o.Stat(name)
		if err != nil || !mfi.ModTime().Equal(lowerTime) {
			t.Errorf("merged %s: mtime %v, %v; want %v", name, mfi.ModTime(), err, lowerTime)
		}
	}
}

func TestCopyUpOnlyOnWriteIntent(t *testing.T) {
	tests := []struct {
		flag   int
		copies bool
		size   int64
	}{
		{os.O_RDONLY, false, 5},
		{os.O_RDONLY | os.O_APPEND, false, 5},
		{os.O_RDONLY | os.O_CREATE, false, 5},
		{os.O_RDONLY | os.O_TRUNC, true, 0},
		{os.O_WRONLY, true, 5},
		{os.O_RDWR, true, 5},
		{os.O_WRONLY | os.O_APPEND, true, 5},
		{os.O_WRONLY | os.O_TRUNC, true, 0},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("flag=%#x", tt.flag), func(t *testing.T) {
			o, upper := newOverlay(t, timedLayer(map[string]string{"f": "lower"}, nil))
			f, err := o.OpenFile("f", tt.flag, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
			if got, _ := afero.Exists(upper, "/f"); got != tt.copies {
				t.Errorf("upper holds f = %v, want %v", got, tt.copies)
			}
			if fi, err := o.Stat("f"); err != nil || fi.Size() != tt.size {
				t.Errorf("Stat(f) = %v, %v, want size %d", fi, err, tt.size)
			}
		})
	}
}

// countingFs counts how often files are opened.
type countingFs struct {
	afero.Fs
	mu    sync.Mutex
	opens map[string]int
}

func (c *countingFs) OpenFile(name string, flag int, perm os.FileMode) (afero.File, error) {
	c.mu.Lock()
	c.opens[name]++
	c.mu.Unlock()
	return c.Fs.OpenFile(name, flag, perm)
}

func (c *countingFs) Open(name string) (afero.File, error) { return c.OpenFile(name, os.O_RDONLY, 0) }

func TestCopyUpSkipsDataForTrunc(t *testing.T) {
	lower := &countingFs{Fs: timedLayer(map[string]string{"f": "lower"}, nil), opens: map[string]int{}}
	o, _ := newOverlay(t, lower)
	f, err := o.OpenFile("f", os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if n := lower.opens["f"]; n != 0 {
		t.Errorf("lower f opened %d times for O_TRUNC, want 0", n)
	}
}

func TestCopyUpRacingWriters(t *testing.T) {
	const n = 32
	data := make([]byte, n*1024)
	lower := timedLayer(map[string]string{"big": string(data)}, nil)
	o, upper := newOverlay(t, lower)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := o.OpenFile("big", os.O_RDWR, 0)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{byte('A' + i%26)}, int64(i*1024)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, err := afero.ReadFile(o, "big")
	if err != nil || len(got) != len(data) {
		t.Fatalf("ReadFile(big) = %d bytes, %v, want %d", len(got), err, len(data))
	}
	for i := range n {
		if got[i*1024] != byte('A'+i%26) {
			t.Errorf("write %d lost", i)
		}
	}
	if left, _ := afero.ReadDir(upper, "/"+workDir); len(left) != 0 {
		t.Errorf("work directory holds %d leftovers", len(left))
	}
}

// failingFs fails writes to files in the work directory after limit bytes.
type failingFs struct {
	afero.Fs
	limit int
}

func (f *failingFs) OpenFile(name string, flag int, perm os.FileMode) (afero.File, error) {
	lf, err := f.Fs.OpenFile(name, flag, perm)
	if err != nil || flag&(os.O_WRONLY|os.O_RDWR) == 0 {
		return lf, err
	}
	return &failingFile{File: lf, left: f.limit}, nil
}

type failingFile struct {
	afero.File
	left int
}

func (f *failingFile) Write(p []byte) (int, error) {
	if len(p) > f.left {
		n, _ := f.File.Write(p[:f.left])
		f.left = 0
		return n, syscall.ENOSPC
	}
	f.left -= len(p)
	return f.File.Write(p)
}

func (f *failingFile) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{f}, r)
}

func TestCopyUpFailureShowsNothingPartial(t *testing.T) {
	lower := timedLayer(map[string]string{"d/f": string(make([]byte, 100000))}, nil)
	mem := afero.NewMemMapFs()
	o, err := New(&failingFs{Fs: mem, limit: 5000}, []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	_, err = o.OpenFile("d/f", os.O_RDWR, 0)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("OpenFile(O_RDWR) = %v, want ENOSPC", err)
	}
	if fi, err := o.Stat("d/f"); err != nil || fi.Size() != 100000 {
		t.Errorf("Stat(d/f) after failed copy-up = %v, %v, want the whole lower file", fi, err)
	}
	if ok, _ := afero.Exists(mem, "/d/f"); ok {
		t.Error("a partial copy became visible in the upper")
	}
	if left, _ := afero.ReadDir(mem, "/"+workDir); len(left) != 0 {
		t.Errorf("work directory holds %d leftovers", len(left))
	}
}

func TestReadHandleFollowsCopyUp(t *testing.T) {
	for _, rename := range []bool{false, true} {
		o, _ := newOverlay(t, timedLayer(map[string]string{"f": "lower"}, nil))
		r, err := o.Open("f")
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2)
		if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "lo" {
			t.Fatalf("first read = %q, %v", buf, err)
		}
		name := "f"
		if rename {
			name = "g"
			if err := o.Rename("f", name); err != nil {
				t.Fatal(err)
			}
		}
		w, err := o.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt([]byte("XYZW"), 0); err != nil {
			t.Fatal(err)
		}
		w.Close()
		rest, err := io.ReadAll(r)
		if err != nil || string(rest) != "ZWr" {
			t.Errorf("rename=%v: read after copy-up = %q, %v, want %q", rename, rest, err, "ZWr")
		}
		r.Close()
	}
}

// blockingFs makes reads of one file wait until released.
type blockingFs struct {
	afero.Fs
	started chan struct{}
	release chan struct{}
}

func (b *blockingFs) OpenFile(name string, flag int, perm os.FileMode) (afero.File, error) {
	f, err := b.Fs.OpenFile(name, flag, perm)
	if err != nil || name != "slow" {
		return f, err
	}
	return &blockingFile{File: f, b: b}, nil
}

func (b *blockingFs) Open(name string) (afero.File, error) { return b.OpenFile(name, os.O_RDONLY, 0) }

type blockingFile struct {
	afero.File
	b    *blockingFs
	once sync.Once
}

func (f *blockingFile) Read(p []byte) (int, error) {
	f.once.Do(func() {
		close(f.b.started)
		<-f.b.release
	})
	return f.File.Read(p)
}

// TestLongCopyUpDoesNotBlockOthers fails by deadlock if a copy-up holds the
// overlay's lock while it copies.
func TestLongCopyUpDoesNotBlockOthers(t *testing.T) {
	lower := &blockingFs{Fs: timedLayer(map[string]string{"slow": "data", "other": "x"}, nil),
		started: make(chan struct{}), release: make(chan struct{})}
	o, _ := newOverlay(t, lower)
	done := make(chan error)
	go func() {
		f, err := o.OpenFile("slow", os.O_RDWR, 0)
		if err == nil {
			err = f.Close()
		}
		done <- err
	}()
	<-lower.started
	if err := afero.WriteFile(o, "new", []byte("n"), 0o644); err != nil {
		t.Error(err)
	}
	if err := o.Chmod("other", 0o600); err != nil {
		t.Error(err)
	}
	if _, err := o.Stat("slow"); err != nil {
		t.Error(err)
	}
	close(lower.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestCopyUpKeepsOwnerAndAtimeOnDisk checks what only disk layers report:
// the owner and the access time survive a copy-up. It needs root to chown.
func TestCopyUpKeepsOwnerAndAtimeOnDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	low, up := t.TempDir(), t.TempDir()
	mustWrite(t, low+"/d/f", "lower")
	atime := lowerTime.Add(time.Hour)
	for _, p := range []string{low + "/d/f", low + "/d"} {
		if err := os.Chown(p, 1234, 5678); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, atime, lowerTime); err != nil {
			t.Fatal(err)
		}
	}
	lower := afero.NewReadOnlyFs(afero.NewBasePathFs(afero.NewOsFs(), low))
	o, err := New(afero.NewBasePathFs(afero.NewOsFs(), up), []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Chmod("d/f", 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"d", "d/f"} {
		fi, err := os.Lstat(up + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		uid, gid, _ := fileOwner(fi)
		if uid != 1234 || gid != 5678 {
			t.Errorf("upper %s owner = %d:%d, want 1234:5678", name, uid, gid)
		}
		if got := fileAtime(fi); !got.Equal(atime) {
			t.Errorf("upper %s atime = %v, want %v", name, got, atime)
		}
	}
}

// TestCopyUpLargeFileOnDisk copies up a file bigger than any buffer between
// disk layers, where the kernel does the copy, and checks every byte.
func TestCopyUpLargeFileOnDisk(t *testing.T) {
	low, up := t.TempDir(), t.TempDir()
	data := make([]byte, 3<<20+123)
	for i := range data {
		data[i] = byte(i*7 + i>>13)
	}
	if err := os.WriteFile(low+"/big", data, 0o640); err != nil {
		t.Fatal(err)
	}
	lower := afero.NewReadOnlyFs(afero.NewBasePathFs(afero.NewOsFs(), low))
	o, err := New(afero.NewBasePathFs(afero.NewOsFs(), up), []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	f, err := o.OpenFile("big", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("!"), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := os.ReadFile(up + "/big")
	if err != nil {
		t.Fatal(err)
	}
	data[0] = '!'
	if !bytes.Equal(got, data) {
		t.Errorf("upper copy differs from the lower file (%d bytes, want %d)", len(got), len(data))
	}
}

// chownFs records Chown calls and fails them with err, if set.
type chownFs struct {
	afero.Fs
	err   error
	calls []string
}

func (c *chownFs) Chown(name string, uid, gid int) error {
	c.calls = append(c.calls, fmt.Sprintf("%s %d:%d", name, uid, gid))
	if c.err != nil {
		return &fs.PathError{Op: "chown", Path: name, Err: c.err}
	}
	return c.Fs.Chown(name, uid, gid)
}

// TestCopyUpOwners checks that a copy-up gives the copy the owner a tar
// lower reports, and that an upper refusing to give files away (EPERM, an
// unprivileged process) still gets the copy, owned by the caller.
func TestCopyUpOwners(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: 1, Uid: 1234, Gid: 5678, ModTime: lowerTime}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte("x"))
	tw.Close()
	for _, refuse := range []error{nil, syscall.EPERM} {
		lower, err := NewTarFs(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		if err != nil {
			t.Fatal(err)
		}
		up := &chownFs{Fs: afero.NewMemMapFs(), err: refuse}
		o, err := New(up, []afero.Fs{lower})
		if err != nil {
			t.Fatal(err)
		}
		if err := o.Chmod("f", 0o600); err != nil {
			t.Fatalf("refuse=%v: Chmod = %v, want the copy-up to succeed", refuse, err)
		}
		if len(up.calls) != 1 || !strings.HasSuffix(up.calls[0], " 1234:5678") {
			t.Errorf("refuse=%v: upper Chown calls = %q, want one giving 1234:5678", refuse, up.calls)
		}
		if got := readString(o, "f"); got != "x" {
			t.Errorf("refuse=%v: ReadFile(f) = %q, want %q", refuse, got, "x")
		}
	}
}

// TestCopyUpSyncs checks that a copy-up syncs the copied bytes before the
// copy takes the lower file's place, as the kernel does, and that
// WithVolatile and copy-ups without data skip it.
func TestCopyUpSyncs(t *testing.T) {
	tests := []struct {
		name      string
		content   string
		flag      int
		opts      []Option
		wantSyncs int
	}{
		{"data", "lower bytes", os.O_RDWR, nil, 1},
		{"volatile", "lower bytes", os.O_RDWR, []Option{WithVolatile()}, 0},
		{"empty file", "", os.O_RDWR, nil, 0},
		{"truncated", "lower bytes", os.O_RDWR | os.O_TRUNC, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			upper := overlaytest.NewFaultFs(afero.NewMemMapFs())
			o, err := New(upper.Fs(), []afero.Fs{timedLayer(map[string]string{"f": tt.content}, nil)}, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			upper.Arm(overlaytest.Fault{}) // count only
			f, err := o.OpenFile("f", tt.flag, 0)
			if err != nil {
				t.Fatalf("OpenFile: %v", err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if got := upper.Calls(overlaytest.OpSync); got != tt.wantSyncs {
				t.Errorf("copy-up made %d Sync calls, want %d", got, tt.wantSyncs)
			}
		})
	}
}

// TestCopyUpSyncFailureShowsLower checks that a copy-up whose sync fails
// fails, leaving the lower file in view and no copy behind.
func TestCopyUpSyncFailureShowsLower(t *testing.T) {
	mem := afero.NewMemMapFs()
	upper := overlaytest.NewFaultFs(mem)
	o, err := New(upper.Fs(), []afero.Fs{timedLayer(map[string]string{"d/f": "lower bytes"}, nil)})
	if err != nil {
		t.Fatal(err)
	}
	upper.Arm(overlaytest.Fault{Op: overlaytest.OpSync, N: 1})
	if _, err := o.OpenFile("d/f", os.O_RDWR, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("OpenFile(O_RDWR) with a failing sync = %v, want EIO", err)
	}
	if got, err := afero.ReadFile(o, "d/f"); err != nil || string(got) != "lower bytes" {
		t.Errorf("d/f after the failed copy-up = %q, %v; want the lower bytes", got, err)
	}
	if ok, _ := afero.Exists(mem, "/d/f"); ok {
		t.Error("the unsynced copy became visible in the upper")
	}
}
