package overlay

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/spf13/afero"
)

// renameLower is the lower layer of the rename tests.
func renameLower() afero.Fs {
	return timedLayer(map[string]string{
		"file":         "file",
		"other":        "other",
		"dir/a":        "a",
		"dir/sub/b":    "b",
		"full/x":       "x",
		"merged/lower": "lower",
	}, map[string]fs.FileMode{"empty": 0o755})
}

func TestRename(t *testing.T) {
	tests := []struct {
		name     string
		prepare  func(o *Overlay) error
		old, new string
		wantErr  error
		gone     []string          // names that must not exist afterwards
		want     map[string]string // name -> content afterwards ("/" for a directory)
	}{
		{name: "lower file", old: "file", new: "moved",
			gone: []string{"file"}, want: map[string]string{"moved": "file"}},
		{name: "file over file", old: "file", new: "other",
			gone: []string{"file"}, want: map[string]string{"other": "file"}},
		{name: "file into lower dir", old: "file", new: "dir/sub/file",
			gone: []string{"file"}, want: map[string]string{"dir/sub/file": "file", "dir/a": "a"}},
		{name: "lower dir", old: "dir", new: "newdir",
			gone: []string{"dir", "dir/a"}, want: map[string]string{"newdir/a": "a", "newdir/sub/b": "b"}},
		{name: "merged dir", old: "merged", new: "m2",
			prepare: func(o *Overlay) error { return afero.WriteFile(o, "merged/upper", []byte("upper"), 0o644) },
			gone:    []string{"merged"}, want: map[string]string{"m2/lower": "lower", "m2/upper": "upper"}},
		{name: "upper dir", old: "u", new: "u2",
			prepare: func(o *Overlay) error { return o.MkdirAll("u/v", 0o755) },
			gone:    []string{"u"}, want: map[string]string{"u2/v": "/"}},
		{name: "upper dir onto a deleted lower dir", old: "u", new: "dir",
			prepare: func(o *Overlay) error {
				if err := o.Mkdir("u", 0o755); err != nil {
					return err
				}
				return o.RemoveAll("dir")
			},
			gone: []string{"u", "dir/a"}, want: map[string]string{"dir": "/"}},
		{name: "back and forth", old: "dir", new: "d2",
			prepare: func(o *Overlay) error {
				if err := o.Rename("dir", "d1"); err != nil {
					return err
				}
				return o.Rename("d1", "dir")
			},
			gone: []string{"dir", "d1"}, want: map[string]string{"d2/a": "a", "d2/sub/b": "b"}},
		{name: "same file", old: "file", new: "/file", want: map[string]string{"file": "file"}},
		{name: "onto existing dir", old: "file", new: "empty", wantErr: syscall.EEXIST},
		{name: "dir onto itself", old: "dir", new: "dir", wantErr: syscall.EEXIST},
		{name: "dir onto file", old: "dir", new: "file", wantErr: syscall.ENOTDIR},
		{name: "dir into its own subdir", old: "dir", new: "dir/sub/x", wantErr: syscall.EINVAL},
		{name: "missing source", old: "missing", new: "x", wantErr: syscall.ENOENT},
		{name: "missing source onto dir", old: "missing", new: "empty", wantErr: syscall.ENOENT},
		{name: "missing target parent", old: "file", new: "nowhere/x", wantErr: syscall.ENOENT},
		{name: "target parent is a file", old: "file", new: "other/x", wantErr: syscall.ENOTDIR},
		{name: "the root", old: "/", new: "x", wantErr: syscall.EXDEV},
		{name: "onto the root", old: "dir", new: "/", wantErr: syscall.EEXIST},
		{name: "to a reserved name", old: "file", new: ".wh.file", wantErr: syscall.EINVAL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, _ := newOverlay(t, renameLower())
			if tt.prepare != nil {
				if err := tt.prepare(o); err != nil {
					t.Fatalf("prepare: %v", err)
				}
			}
			err := o.Rename(tt.old, tt.new)
			if tt.wantErr != nil {
				var le *os.LinkError
				if !errors.Is(err, tt.wantErr) || !errors.As(err, &le) {
					t.Fatalf("Rename(%q, %q) = %v, want *os.LinkError %v", tt.old, tt.new, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Rename(%q, %q) = %v", tt.old, tt.new, err)
			}
			for _, name := range tt.gone {
				if _, err := o.Stat(name); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("Stat(%q) = %v, want ErrNotExist", name, err)
				}
			}
			for name, want := range tt.want {
				if want == "/" {
					if fi, err := o.Stat(name); err != nil || !fi.IsDir() {
						t.Errorf("Stat(%q) = %v, %v, want a directory", name, fi, err)
					}
					continue
				}
				if got := readString(o, name); got != want {
					t.Errorf("ReadFile(%q) = %q, want %q", name, got, want)
				}
			}
		})
	}
}

// TestRenameKeepsTimes checks that a renamed lower directory keeps the
// mtimes of everything in it, as the kernel's rename does.
func TestRenameKeepsTimes(t *testing.T) {
	o, _ := newOverlay(t, renameLower())
	if err := o.Rename("dir", "d2"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"d2/a", "d2/sub", "d2/sub/b"} {
		if fi, err := o.Stat(name); err != nil || !fi.ModTime().Equal(lowerTime) {
			t.Errorf("Stat(%q) = %v, %v, want mtime %v", name, fi, err, lowerTime)
		}
	}
}

// TestReadOnlyOverlay checks the errors of a read-only overlay: the lookup
// errors first, EROFS after, except where Linux checks for EROFS first.
func TestReadOnlyOverlay(t *testing.T) {
	o, err := New(nil, []afero.Fs{renameLower()})
	if err != nil {
		t.Fatal(err)
	}
	openErr := func(name string, flag int) error { _, err := o.OpenFile(name, flag, 0o644); return err }
	tests := []struct {
		op   string
		err  error
		want error
	}{
		{"Mkdir existing", o.Mkdir("dir", 0o755), syscall.EEXIST},
		{"Mkdir new", o.Mkdir("new", 0o755), syscall.EROFS},
		{"Mkdir missing parent", o.Mkdir("no/new", 0o755), syscall.ENOENT},
		{"Create new", openErr("new", os.O_CREATE|os.O_WRONLY), syscall.EROFS},
		{"Create excl existing", openErr("file", os.O_CREATE|os.O_EXCL|os.O_WRONLY), syscall.EEXIST},
		{"Open existing for writing", openErr("file", os.O_WRONLY), syscall.EROFS},
		{"Open dir for writing", openErr("dir", os.O_WRONLY), syscall.EISDIR},
		{"Open missing for writing", openErr("missing", os.O_WRONLY), syscall.ENOENT},
		{"O_RDONLY|O_TRUNC", openErr("file", os.O_RDONLY|os.O_TRUNC), syscall.EROFS},
		{"O_CREATE existing read-only", openErr("file", os.O_CREATE|os.O_RDONLY), nil},
		{"Remove existing", o.Remove("file"), syscall.EROFS},
		{"Remove missing", o.Remove("missing"), syscall.EROFS},
		{"RemoveAll missing", o.RemoveAll("missing"), syscall.EROFS},
		{"Rename", o.Rename("file", "x"), syscall.EROFS},
		{"Chmod existing", o.Chmod("file", 0o600), syscall.EROFS},
		{"Chmod missing", o.Chmod("missing", 0o600), syscall.ENOENT},
		{"Chtimes", o.Chtimes("file", time.Now(), time.Now()), syscall.EROFS},
		{"Symlink existing", o.SymlinkIfPossible("x", "file"), syscall.EEXIST},
		{"Symlink new", o.SymlinkIfPossible("x", "new"), syscall.EROFS},
	}
	for _, tt := range tests {
		if tt.want == nil && tt.err != nil || tt.want != nil && !errors.Is(tt.err, tt.want) {
			t.Errorf("%s = %v, want %v", tt.op, tt.err, tt.want)
		}
	}
	if got := readString(o, "dir/a"); got != "a" {
		t.Errorf("ReadFile(dir/a) = %q, want %q", got, "a")
	}
}

// TestHandleErrors checks the errors a handle gives for calls its flags do
// not allow, as on Linux.
func TestHandleErrors(t *testing.T) {
	o, _ := newOverlay(t, renameLower())
	r, err := o.Open("file")
	if err != nil {
		t.Fatal(err)
	}
	d, err := o.Open("dir")
	if err != nil {
		t.Fatal(err)
	}
	w, err := o.OpenFile("other", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, errWrite := r.Write([]byte("x"))
	_, errWriteAt := r.WriteAt([]byte("x"), 0)
	_, errDirRead := d.Read(make([]byte, 1))
	_, errDirWrite := d.Write([]byte("x"))
	_, errFileReaddir := r.Readdirnames(-1)
	_, errWOnlyRead := w.Read(make([]byte, 1))
	tests := []struct {
		op   string
		err  error
		want error
	}{
		{"Write on read-only handle", errWrite, syscall.EBADF},
		{"WriteAt on read-only handle", errWriteAt, syscall.EBADF},
		{"Truncate on read-only handle", r.Truncate(0), syscall.EINVAL},
		{"Read on directory", errDirRead, syscall.EISDIR},
		{"Write on directory", errDirWrite, syscall.EBADF},
		{"Readdirnames on file", errFileReaddir, syscall.ENOTDIR},
		{"Read on write-only handle", errWOnlyRead, syscall.EBADF},
		{"Close", r.Close(), nil},
		{"Close twice", r.Close(), os.ErrClosed},
	}
	for _, tt := range tests {
		if tt.want == nil && tt.err != nil || tt.want != nil && !errors.Is(tt.err, tt.want) {
			t.Errorf("%s = %v, want %v", tt.op, tt.err, tt.want)
		}
	}
	d.Close()
	w.Close()
}

// TestReadPastEnd checks that reading from past the end of a file gives
// nothing and io.EOF, as on Linux, whatever the layer holding the file
// says: MemMapFs says io.ErrUnexpectedEOF.
func TestReadPastEnd(t *testing.T) {
	read := func(f afero.File) (int, error) { return f.Read(make([]byte, 4)) }
	readAt := func(f afero.File) (int, error) { return f.ReadAt(make([]byte, 4), 100) }
	for _, upper := range []string{"lower file", "upper file"} {
		o, f := openLowerFile(t, afero.NewMemMapFs(), os.O_RDONLY)
		f.Close()
		if upper == "upper file" {
			if err := afero.WriteFile(o, "file", []byte("longer content"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for name, call := range map[string]func(afero.File) (int, error){"Read": read, "ReadAt": readAt} {
			f, err := o.Open("file")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Seek(100, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			if n, err := call(f); n != 0 || err != io.EOF {
				t.Errorf("%s: %s past the end = %d, %v; want 0, io.EOF", upper, name, n, err)
			}
			f.Close()
		}
	}
}

// handleTestUppers returns the uppers that handle tests run over, by name:
// a MemMapFs, whose own handles differ from Linux's, and a host directory.
func handleTestUppers(t *testing.T) map[string]func() afero.Fs {
	return map[string]func() afero.Fs{
		"mem":  afero.NewMemMapFs,
		"host": func() afero.Fs { return afero.NewBasePathFs(afero.NewOsFs(), t.TempDir()) },
		// A directory of a shared MemMapFs: its handles wrap MemMapFs's.
		"mem subdirectory": func() afero.Fs {
			mem := afero.NewMemMapFs()
			if err := mem.MkdirAll("/sandbox", 0o755); err != nil {
				t.Fatal(err)
			}
			return afero.NewBasePathFs(mem, "/sandbox")
		},
	}
}

// openLowerFile returns an overlay of upper over a MemMapFs lower holding
// "file" ("lower"), and that file opened with flag.
func openLowerFile(t *testing.T, upper afero.Fs, flag int) (*Overlay, afero.File) {
	t.Helper()
	lower := afero.NewMemMapFs()
	if err := afero.WriteFile(lower, "/file", []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := New(upper, []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	f, err := o.OpenFile("file", flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	return o, f
}

// TestHandleWritesAsOnLinux checks what writes through a handle do to a
// file's content and mtime, over a MemMapFs upper (whose handles append
// only at open and set the mtime on Close and on empty writes) and a host
// directory upper: each must do as a handle on Linux does.
func TestHandleWritesAsOnLinux(t *testing.T) {
	old := time.Date(2010, 5, 5, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		flag      int
		run       func(o afero.Fs, f afero.File) error
		content   string
		keepMtime bool // the mtime is still old, as set before Close
	}{
		{name: "O_APPEND writes at the end after a truncate", flag: os.O_WRONLY | os.O_APPEND,
			run: func(o afero.Fs, f afero.File) error {
				if err := f.Truncate(2); err != nil {
					return err
				}
				_, err := f.Write([]byte("xy"))
				return err
			},
			content: "loxy"},
		{name: "O_APPEND writes at the end after another handle's write", flag: os.O_WRONLY | os.O_APPEND,
			run: func(o afero.Fs, f afero.File) error {
				if err := afero.WriteFile(o, "file", []byte("other content"), 0o644); err != nil {
					return err
				}
				_, err := f.Write([]byte("!"))
				return err
			},
			content: "other content!"},
		{name: "Close keeps an mtime set after the last write", flag: os.O_RDWR,
			run: func(o afero.Fs, f afero.File) error {
				if _, err := f.Write([]byte("L")); err != nil {
					return err
				}
				return o.Chtimes("file", old, old)
			},
			content: "Lower", keepMtime: true},
		{name: "an empty write changes nothing", flag: os.O_RDWR,
			run: func(o afero.Fs, f afero.File) error {
				if err := o.Chtimes("file", old, old); err != nil {
					return err
				}
				_, err := f.Write(nil)
				return err
			},
			content: "lower", keepMtime: true},
		{name: "O_RDONLY|O_TRUNC truncates, and Close keeps the mtime", flag: os.O_RDONLY | os.O_TRUNC,
			run: func(o afero.Fs, f afero.File) error {
				return o.Chtimes("file", old, old)
			},
			content: "", keepMtime: true},
	}
	for _, tt := range tests {
		for kind, upper := range handleTestUppers(t) {
			o, f := openLowerFile(t, upper(), tt.flag)
			if err := tt.run(o, f); err != nil {
				t.Fatalf("%s, %s upper: %v", tt.name, kind, err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if got := readString(o, "file"); got != tt.content {
				t.Errorf("%s, %s upper: content %q, want %q", tt.name, kind, got, tt.content)
			}
			fi, err := o.Stat("file")
			if err != nil {
				t.Fatal(err)
			}
			if tt.keepMtime && !fi.ModTime().Equal(old) {
				t.Errorf("%s, %s upper: mtime %v after Close, want %v", tt.name, kind, fi.ModTime(), old)
			}
		}
	}
}

// TestHandleOffsetsAsOnLinux checks offsets and the calls that *os.File
// answers before asking the kernel, over a MemMapFs upper (whose handles
// differ from Linux's in each row) and a host directory upper.
func TestHandleOffsetsAsOnLinux(t *testing.T) {
	tests := []struct {
		name string
		flag int
		run  func(f afero.File) (string, error)
		want string
		err  error
	}{
		{name: "an O_APPEND handle starts at offset 0", flag: os.O_WRONLY | os.O_APPEND,
			run: func(f afero.File) (string, error) {
				off, err := f.Seek(0, io.SeekCurrent)
				return fmt.Sprint(off), err
			},
			want: "0"},
		{name: "WriteAt leaves the offset", flag: os.O_RDWR,
			run: func(f afero.File) (string, error) {
				if _, err := f.WriteAt([]byte("XY"), 3); err != nil {
					return "", err
				}
				b, err := io.ReadAll(f)
				return string(b), err
			},
			want: "lowXY"},
		{name: "a seek before the start is EINVAL and keeps the offset", flag: os.O_RDONLY,
			run: func(f afero.File) (string, error) {
				if _, err := f.Seek(2, io.SeekStart); err != nil {
					return "", err
				}
				if _, err := f.Seek(-3, io.SeekCurrent); !errors.Is(err, syscall.EINVAL) {
					return "", fmt.Errorf("seek before the start: %v", err)
				}
				b, err := io.ReadAll(f)
				return string(b), err
			},
			want: "wer"},
		{name: "an unknown whence is EINVAL", flag: os.O_RDONLY,
			run: func(f afero.File) (string, error) {
				_, err := f.Seek(0, 7)
				return "", err
			},
			err: syscall.EINVAL},
		{name: "SEEK_DATA finds data where there is some", flag: os.O_RDONLY,
			run: func(f afero.File) (string, error) {
				off, err := f.Seek(2, seekData)
				return fmt.Sprint(off), err
			},
			want: "2"},
		{name: "SEEK_HOLE finds the end", flag: os.O_RDONLY,
			run: func(f afero.File) (string, error) {
				off, err := f.Seek(2, seekHole)
				return fmt.Sprint(off), err
			},
			want: "5"},
		{name: "SEEK_DATA at the end is ENXIO", flag: os.O_RDONLY,
			run: func(f afero.File) (string, error) {
				_, err := f.Seek(5, seekData)
				return "", err
			},
			err: syscall.ENXIO},
		{name: "a negative size is EINVAL", flag: os.O_RDWR,
			run: func(f afero.File) (string, error) {
				return "", f.Truncate(-1)
			},
			err: syscall.EINVAL},
		{name: "ReadAt at a negative offset is EINVAL", flag: os.O_RDONLY,
			run: func(f afero.File) (string, error) {
				_, err := f.ReadAt(make([]byte, 2), -1)
				return "", err
			},
			err: syscall.EINVAL},
		{name: "WriteAt on an O_APPEND handle is EINVAL", flag: os.O_WRONLY | os.O_APPEND,
			run: func(f afero.File) (string, error) {
				_, err := f.WriteAt([]byte("x"), 0)
				return "", err
			},
			err: syscall.EINVAL},
		{name: "WriteAt of nothing on a read-only handle succeeds", flag: os.O_RDONLY,
			run: func(f afero.File) (string, error) {
				n, err := f.WriteAt(nil, 0)
				return fmt.Sprint(n), err
			},
			want: "0"},
		{name: "Read of nothing on a write-only handle succeeds", flag: os.O_WRONLY,
			run: func(f afero.File) (string, error) {
				n, err := f.Read(nil)
				return fmt.Sprint(n), err
			},
			want: "0"},
	}
	for _, tt := range tests {
		for kind, upper := range handleTestUppers(t) {
			_, f := openLowerFile(t, upper(), tt.flag)
			got, err := tt.run(f)
			switch {
			case tt.err == nil && err != nil, tt.err != nil && !errors.Is(err, tt.err):
				t.Errorf("%s, %s upper: error %v, want %v", tt.name, kind, err, tt.err)
			case got != tt.want:
				t.Errorf("%s, %s upper: %q, want %q", tt.name, kind, got, tt.want)
			}
			f.Close()
		}
	}
}

// TestDirectoryTimes checks which operations change a directory's mtime in
// the merged view: adding, removing and renaming entries do; copying a
// child up and changing its attributes do not.
func TestDirectoryTimes(t *testing.T) {
	tests := []struct {
		name    string
		op      func(o *Overlay) error
		changes bool
	}{
		{"copy-up", func(o *Overlay) error {
			f, err := o.OpenFile("dir/a", os.O_RDWR, 0)
			if err == nil {
				err = f.Close()
			}
			return err
		}, false},
		{"chmod child", func(o *Overlay) error { return o.Chmod("dir/a", 0o600) }, false},
		{"create", func(o *Overlay) error { return afero.WriteFile(o, "dir/new", nil, 0o644) }, true},
		{"remove", func(o *Overlay) error { return o.Remove("dir/a") }, true},
		{"rename within", func(o *Overlay) error { return o.Rename("dir/a", "dir/b") }, true},
		{"mkdir", func(o *Overlay) error { return o.Mkdir("dir/new", 0o755) }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, _ := newOverlay(t, renameLower())
			if err := tt.op(o); err != nil {
				t.Fatal(err)
			}
			fi, err := o.Stat("dir")
			if err != nil {
				t.Fatal(err)
			}
			if changed := !fi.ModTime().Equal(lowerTime); changed != tt.changes {
				t.Errorf("dir mtime %v after %s: changed = %v, want %v", fi.ModTime(), tt.name, changed, tt.changes)
			}
		})
	}
}

// TestCreateThroughDanglingSymlink checks that O_CREATE follows a dangling
// symlink and creates its target, while O_EXCL refuses it.
func TestCreateThroughDanglingSymlink(t *testing.T) {
	d := t.TempDir()
	if err := os.Symlink("target", d+"/link"); err != nil {
		t.Fatal(err)
	}
	lower := afero.NewReadOnlyFs(afero.NewBasePathFs(afero.NewOsFs(), d))
	o, err := New(afero.NewBasePathFs(afero.NewOsFs(), t.TempDir()), []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.OpenFile("link", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("OpenFile(link, O_CREATE|O_EXCL) = %v, want EEXIST", err)
	}
	f, err := o.OpenFile("link", os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("via link")
	f.Close()
	if got := readString(o, "target"); got != "via link" {
		t.Errorf("ReadFile(target) = %q, want %q", got, "via link")
	}
}

// TestSymlinkVerbatimOnDisk checks that a symlink created through a disk
// upper keeps its target as given (afero's BasePathFs would rewrite it).
func TestSymlinkVerbatimOnDisk(t *testing.T) {
	up := t.TempDir()
	o, err := New(afero.NewBasePathFs(afero.NewOsFs(), up), []afero.Fs{renameLower()})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.SymlinkIfPossible("../dir/a", "link"); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(up + "/link"); err != nil || target != "../dir/a" {
		t.Errorf("host Readlink = %q, %v, want %q", target, err, "../dir/a")
	}
	if got := readString(o, "link"); got != "a" {
		t.Errorf("ReadFile(link) = %q, want %q", got, "a")
	}
	if err := o.SymlinkIfPossible("x", "link"); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("Symlink onto existing = %v, want EEXIST", err)
	}
	for kind, upper := range handleTestUppers(t) {
		if kind == "host" {
			continue
		}
		o, err := New(upper(), []afero.Fs{renameLower()})
		if err != nil {
			t.Fatal(err)
		}
		err = o.SymlinkIfPossible("x", "l")
		var errno syscall.Errno
		if !errors.Is(err, afero.ErrNoSymlink) || !errors.As(err, &errno) || errno != syscall.EPERM {
			t.Errorf("Symlink on a %s upper = %v, want afero.ErrNoSymlink wrapping EPERM", kind, err)
		}
	}
}

// TestConcurrentListing checks that a reader listing a directory while
// others create and delete in it never sees a duplicate or a marker.
func TestConcurrentListing(t *testing.T) {
	o, _ := newOverlay(t, renameLower())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			name := "dir/f" + string(rune('a'+i%26))
			_ = afero.WriteFile(o, name, nil, 0o644)
			_ = o.Remove(name)
			_ = o.Remove("dir/a")
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
		}
		f, err := o.Open("dir")
		if err != nil {
			t.Fatal(err)
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !slices.IsSorted(names) || len(slices.Compact(slices.Clone(names))) != len(names) {
			t.Fatalf("listing %q is not sorted and unique", names)
		}
		for _, n := range names {
			if isReserved(n) {
				t.Fatalf("listing shows %q", n)
			}
		}
	}
}

func TestFromIOFSLowerIsNeverWritten(t *testing.T) {
	m := fstest.MapFS{"f": mapFile("lower")}
	o, _ := newOverlay(t, mapLayer(m))
	if err := afero.WriteFile(o, "f", []byte("upper"), 0o644); err != nil {
		t.Fatal(err)
	}
	if string(m["f"].Data) != "lower" {
		t.Errorf("lower f = %q, want it untouched", m["f"].Data)
	}
}

// leakyFs is an upper whose errors carry a host path, as OsFs's do.
type leakyFs struct{ afero.Fs }

const hostSecret = "/srv/secret/host/path"

func (l leakyFs) Chmod(name string, mode os.FileMode) error {
	return &fs.PathError{Op: "chmod", Path: hostSecret + name, Err: syscall.EIO}
}

func (l leakyFs) OpenFile(name string, flag int, perm os.FileMode) (afero.File, error) {
	f, err := l.Fs.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return leakyFile{f}, nil
}

type leakyFile struct{ afero.File }

func (leakyFile) Write([]byte) (int, error) {
	return 0, &fs.PathError{Op: "write", Path: hostSecret, Err: syscall.ENOSPC}
}

// TestErrorsHideHostPaths checks that errors name the caller's path and
// keep the errno, never a layer's host path.
func TestErrorsHideHostPaths(t *testing.T) {
	o, err := New(leakyFs{afero.NewMemMapFs()}, []afero.Fs{renameLower()})
	if err != nil {
		t.Fatal(err)
	}
	f, err := o.Create("new")
	if err != nil {
		t.Fatal(err)
	}
	_, werr := f.Write([]byte("x"))
	f.Close()
	cerr := o.Chmod("new", 0o600)
	for _, tt := range []struct {
		err  error
		want error
	}{{werr, syscall.ENOSPC}, {cerr, syscall.EIO}} {
		var pe *fs.PathError
		if !errors.As(tt.err, &pe) || !errors.Is(tt.err, tt.want) || pe.Path != "new" {
			t.Errorf("error = %v, want *fs.PathError for %q wrapping %v", tt.err, "new", tt.want)
		}
		if tt.err != nil && strings.Contains(tt.err.Error(), hostSecret) {
			t.Errorf("error %q leaks the host path", tt.err)
		}
	}
}

// TestRenameMergedDropsIdleWhiteouts checks that a renamed merged directory,
// opaque now, keeps no whiteouts: they would hide nothing.
func TestRenameMergedDropsIdleWhiteouts(t *testing.T) {
	o, upper := newOverlay(t, renameLower())
	if err := o.Remove("dir/a"); err != nil {
		t.Fatal(err)
	}
	if err := o.Remove("dir/sub/b"); err != nil {
		t.Fatal(err)
	}
	if err := o.Rename("dir", "e"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"/e/.wh.a", "/e/sub/.wh.b"} {
		if ok, _ := afero.Exists(upper, name); ok {
			t.Errorf("upper holds the idle whiteout %s", name)
		}
	}
	if names := readDirNames(t, o, "e"); !slices.Equal(names, []string{"sub"}) {
		t.Errorf("Readdirnames(e) = %q, want [sub]", names)
	}
}

// TestReadHandleFollowsAcrossCommit checks that a read handle opened before
// a Commit sees what is written to its file after it, as it would had there
// been no Commit: the file it reads is now in the committed layer, so a
// write copies it up, and the handle must follow the copy, as a handle on
// a lower file does. The handle was opened on a lower file (and, in one
// case, already follows its copy) or on a file in the upper.
func TestReadHandleFollowsAcrossCommit(t *testing.T) {
	write := func(o *Overlay, data string) error { return afero.WriteFile(o, "f", []byte(data), 0o644) }
	tests := []struct {
		name   string
		before func(o *Overlay, r afero.File) error // between Open and Commit
		lower  bool                                 // f is in the lower, else in the upper
		want   string                               // what r reads after Commit and a write of "third"
	}{
		{"lower file, copied up before Commit", func(o *Overlay, _ afero.File) error { return write(o, "second") }, true, "third"},
		{"lower file, followed before Commit", func(o *Overlay, r afero.File) error {
			if err := write(o, "second"); err != nil {
				return err
			}
			_, err := r.Stat() // switches r to the copy
			return err
		}, true, "third"},
		{"lower file, untouched", nil, true, "third"},
		{"upper file", nil, false, "third"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, _ := newOverlay(t, timedLayer(map[string]string{"f": "first", "g": "g"}, nil))
			if !tt.lower {
				if err := write(o, "first"); err != nil {
					t.Fatal(err)
				}
			}
			r, err := o.Open("f")
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if tt.before != nil {
				if err := tt.before(o, r); err != nil {
					t.Fatal(err)
				}
			}
			if err := o.Commit(afero.NewMemMapFs()); err != nil {
				t.Fatal(err)
			}
			if err := write(o, "third"); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil || string(got) != tt.want {
				t.Errorf("read after Commit and a write = %q, %v, want %q", got, err, tt.want)
			}
		})
	}
}

// TestChownDropsSetID checks that Chown clears what Linux's chown clears,
// even for root: the set-user-ID bit of a file that is not a directory,
// and its set-group-ID bit where the group may execute.
func TestChownDropsSetID(t *testing.T) {
	tests := []struct {
		name      string
		dir       bool
		mode, got os.FileMode
	}{
		{"set-user-ID file", false, 0o755 | os.ModeSetuid, 0o755},
		{"set-group-ID file, group may execute", false, 0o775 | os.ModeSetgid, 0o775},
		{"set-group-ID file, group may not execute", false, 0o765 | os.ModeSetgid, 0o765 | os.ModeSetgid},
		{"sticky file", false, 0o755 | os.ModeSticky, 0o755 | os.ModeSticky},
		{"set-ID directory", true, 0o755 | os.ModeSetuid | os.ModeSetgid, 0o755 | os.ModeSetuid | os.ModeSetgid},
	}
	for _, tt := range tests {
		for kind, upper := range handleTestUppers(t) {
			o, err := New(upper(), []afero.Fs{afero.NewMemMapFs()})
			if err != nil {
				t.Fatal(err)
			}
			if tt.dir {
				err = o.Mkdir("x", 0o755)
			} else {
				err = afero.WriteFile(o, "x", []byte("x"), 0o644)
			}
			if err == nil {
				err = o.Chmod("x", tt.mode)
			}
			if err == nil {
				err = o.Chown("x", os.Getuid(), os.Getgid())
			}
			if err != nil {
				t.Fatal(err)
			}
			fi, err := o.Stat("x")
			if err != nil {
				t.Fatal(err)
			}
			if mode := fi.Mode() &^ os.ModeDir; mode != tt.got {
				t.Errorf("%s, %s upper: mode after Chown %v, want %v", tt.name, kind, mode, tt.got)
			}
		}
	}
}

// TestChtimesZeroKeepsTime checks that a zero time given to Chtimes leaves
// that time as it was, as os.Chtimes does, over any upper: MemMapFs would
// set it to year 1.
func TestChtimesZeroKeepsTime(t *testing.T) {
	old := time.Date(2010, 5, 5, 0, 0, 0, 0, time.UTC)
	later := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for kind, upper := range handleTestUppers(t) {
		for _, lower := range []bool{true, false} {
			o, f := openLowerFile(t, upper(), os.O_RDONLY)
			f.Close()
			if !lower {
				if err := o.Chtimes("file", old, old); err != nil {
					t.Fatal(err)
				}
			}
			fi, err := o.Stat("file")
			if err != nil {
				t.Fatal(err)
			}
			before := fi.ModTime() // now: a MemMapFs FileInfo is live
			if err := o.Chtimes("file", later, time.Time{}); err != nil {
				t.Fatal(err)
			}
			if fi, err = o.Stat("file"); err != nil {
				t.Fatal(err)
			}
			if !fi.ModTime().Equal(before) {
				t.Errorf("%s upper, lower file %v: mtime after Chtimes(later, zero) %v, want %v", kind, lower, fi.ModTime(), before)
			}
			if err := o.Chtimes("file", time.Time{}, later); err != nil {
				t.Fatal(err)
			}
			if fi, err = o.Stat("file"); err != nil || !fi.ModTime().Equal(later) {
				t.Errorf("%s upper, lower file %v: mtime after Chtimes(zero, later) %v, %v; want %v", kind, lower, fi.ModTime(), err, later)
			}
		}
	}
}

// TestCloseChangesNoTimes checks that closing a handle opened for writing
// leaves every mtime alone, as Linux's close does: its own file's, which
// the last write set, even after a rename, and that of another file that
// took the handle's old name.
func TestCloseChangesNoTimes(t *testing.T) {
	old := time.Date(2010, 5, 5, 0, 0, 0, 0, time.UTC)
	for kind, upper := range handleTestUppers(t) {
		o, err := New(upper(), []afero.Fs{afero.NewMemMapFs()})
		if err != nil {
			t.Fatal(err)
		}
		w, err := o.OpenFile("a", os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		steps := []error{
			func() error { _, err := w.Write([]byte("x")); return err }(),
			o.Chtimes("a", old, old),
			o.Rename("a", "b"),
			afero.WriteFile(o, "a", []byte("new"), 0o644),
			o.Chtimes("a", old.Add(time.Hour), old.Add(time.Hour)),
			w.Close(),
		}
		if err := errors.Join(steps...); err != nil {
			t.Fatalf("%s upper: %v", kind, err)
		}
		for name, want := range map[string]time.Time{"a": old.Add(time.Hour), "b": old} {
			fi, err := o.Stat(name)
			switch {
			case err != nil:
				t.Errorf("%s upper: Stat(%s) after the Close: %v", kind, name, err)
			case !fi.ModTime().Equal(want):
				t.Errorf("%s upper: mtime of %s after the Close = %v, want %v", kind, name, fi.ModTime(), want)
			}
		}
	}
}
