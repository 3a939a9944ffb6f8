package overlay

import (
	"errors"
	"io"
	"os"
	"syscall"
	"testing"

	"github.com/spf13/afero"
)

func TestLayerPathAs(t *testing.T) {
	rooted, plain := layer{rooted: true}, layer{}
	tests := []struct {
		l       layer
		name    string
		spelled string
		want    string
	}{
		{rooted, "a/b", "/a/b", "/a/b"},       // the caller's spelling is the layer's form
		{rooted, "a/b", "a/b", "/a/b"},        // unrooted spelling: built
		{rooted, "a/b", "/a//b", "/a/b"},      // unclean spelling: built
		{rooted, "a/b", "/x/b", "/a/b"},       // a symlink led elsewhere
		{rooted, "a/b", "/a/bc", "/a/b"},      // longer
		{rooted, ".", "/", "/"},               // the root
		{rooted, "a", "", "/a"},               // nothing spelled
		{plain, "a/b", "a/b", "a/b"},          // the same
		{plain, "a/b", "/a/b", "a/b"},         // rooted spelling on an unrooted layer
		{plain, "a/b", "a/c", "a/b"},          // another name
		{rooted, "a/b", "\x00a/b", "/a/b"},    // not a slash in front
		{rooted, "ab", "/ab", "/ab"},          // one component
		{rooted, "a/b/c", "/a/b/c", "/a/b/c"}, // deeper
	}
	for _, tt := range tests {
		if got := tt.l.pathAs(tt.name, tt.spelled); got != tt.want {
			t.Errorf("rooted=%v pathAs(%q, %q) = %q, want %q", tt.l.rooted, tt.name, tt.spelled, got, tt.want)
		}
		if got := tt.l.pathAs(tt.name, tt.spelled); got != tt.l.path(tt.name) {
			t.Errorf("rooted=%v pathAs(%q, %q) = %q, path gives %q", tt.l.rooted, tt.name, tt.spelled, got, tt.l.path(tt.name))
		}
	}
}

// TestMemLowerFileOpensFromItsLookup checks the shortcut for a regular file
// of a MemMapFs lower: the lookup keeps the file, and a read handle on it is
// built from that, in one allocation with the overlay's handle. The handle
// must behave as one that MemMapFs's Open gave, and still follow a copy-up.
// A MemMapFs wrapped in another Fs, and a directory, take the plain way.
func TestMemLowerFileOpensFromItsLookup(t *testing.T) {
	plain := func(fsys afero.Fs) afero.Fs { return fsys }
	based := func(fsys afero.Fs) afero.Fs { return afero.NewBasePathFs(fsys, "/") }
	tests := []struct {
		name     string
		wrap     func(afero.Fs) afero.Fs
		upper    bool
		wantKept bool
	}{
		{"plain MemMapFs", plain, true, true},
		{"plain MemMapFs, read-only overlay", plain, false, true},
		{"BasePathFs over MemMapFs", based, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			top, bottom := afero.NewMemMapFs(), afero.NewMemMapFs()
			fatalIf(t, afero.WriteFile(top, "/d/g", []byte("top"), 0o644))
			fatalIf(t, afero.WriteFile(bottom, "/d/f", []byte("bottom file"), 0o640))
			var upper afero.Fs
			if tt.upper {
				upper = afero.NewMemMapFs()
			}
			o, err := New(upper, []afero.Fs{tt.wrap(top), tt.wrap(bottom)})
			fatalIf(t, err)

			e, found, err := o.lookupQuickly("d/f", true, false)
			if err != nil || !found {
				t.Fatalf("lookup of d/f: found %v, %v", found, err)
			}
			if _, kept := e.info.(*memFileInfo); kept != tt.wantKept {
				t.Errorf("the lookup kept the MemMapFs file: %v, want %v", kept, tt.wantKept)
			}
			d, _, err := o.lookupQuickly("d", true, false)
			fatalIf(t, err)
			if _, ok := d.info.(frozenInfo); !ok {
				t.Errorf("a directory's FileInfo is %T, want it only frozen", d.info)
			}

			f, err := o.Open("/d/f")
			fatalIf(t, err)
			checkReads(t, f, "bottom file")
			fi, err := f.Stat()
			fatalIf(t, err)
			if fi.Name() != "f" || fi.Size() != 11 || fi.Mode() != 0o640 {
				t.Errorf("Stat: %q, %d bytes, %v; want \"f\", 11 bytes, -rw-r-----", fi.Name(), fi.Size(), fi.Mode())
			}
			if _, err := f.Write([]byte("x")); !errors.Is(err, syscall.EBADF) {
				t.Errorf("Write on a read handle: %v, want EBADF", err)
			}
			if _, err := f.Readdir(-1); !errors.Is(err, syscall.ENOTDIR) {
				t.Errorf("Readdir on a file: %v, want ENOTDIR", err)
			}
			if tt.upper { // a copy-up gives the open handle the copy
				w, err := o.OpenFile("/d/f", os.O_RDWR, 0)
				fatalIf(t, err)
				_, err = w.WriteAt([]byte("B"), 0)
				fatalIf(t, err)
				fatalIf(t, w.Close())
				checkReads(t, f, "Bottom file")
			}
			fatalIf(t, f.Close())
			if _, err := f.Read(make([]byte, 1)); !errors.Is(err, os.ErrClosed) {
				t.Errorf("Read after Close: %v, want ErrClosed", err)
			}
			if got, err := afero.ReadFile(bottom, "/d/f"); err != nil || string(got) != "bottom file" {
				t.Errorf("the lower file holds %q, %v; want it untouched", got, err)
			}
		})
	}
}

// checkReads checks that f holds want, through ReadAt and through Seek and
// Read, leaving it at the end.
func checkReads(t *testing.T, f afero.File, want string) {
	t.Helper()
	buf := make([]byte, 4)
	if n, err := f.ReadAt(buf, 7); err != nil || string(buf[:n]) != want[7:] {
		t.Errorf("ReadAt 7: %q, %v; want %q", buf[:n], err, want[7:])
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatalf("Seek: %v", err)
	}
	if got, err := io.ReadAll(f); err != nil || string(got) != want {
		t.Errorf("read %q, %v; want %q", got, err, want)
	}
}

// fatalIf stops t at an error that leaves nothing to check.
func fatalIf(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
