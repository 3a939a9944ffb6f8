package overlay

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"testing/fstest"

	"github.com/spf13/afero"
)

// mapLayer returns a read-only layer built from files, so that an accidental
// write to it fails.
func mapLayer(files fstest.MapFS) afero.Fs {
	return afero.FromIOFS{FS: files}
}

// mapFile returns a MapFS regular file holding data.
func mapFile(data string) *fstest.MapFile {
	return &fstest.MapFile{Data: []byte(data), Mode: 0o644}
}

// newOverlay returns an overlay of a fresh MemMapFs upper over lowers.
func newOverlay(t *testing.T, lowers ...afero.Fs) (*Overlay, afero.Fs) {
	t.Helper()
	upper := afero.NewMemMapFs()
	o, err := New(upper, lowers)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return o, upper
}

// readString returns the content of name in fsys, or the error's text.
func readString(fsys afero.Fs, name string) string {
	b, err := afero.ReadFile(fsys, name)
	if err != nil {
		return "error: " + errnoOf(err).Error()
	}
	return string(b)
}

func TestLookupRules(t *testing.T) {
	l1 := mapLayer(fstest.MapFS{
		"file-over-dir":                       mapFile("top"),
		"merged/top":                          mapFile("top"),
		"merged/both":                         mapFile("from l1"),
		"opaque/" + opaqueMarker:              mapFile(""),
		"opaque/mine":                         mapFile("l1"),
		whiteoutPrefix + "gone":               mapFile(""),
		"merged/" + whiteoutPrefix + "hidden": mapFile(""),
		"dir-over-file/child":                 mapFile("c"),
	})
	l2 := mapLayer(fstest.MapFS{
		"file-over-dir/child":  mapFile("leaked"),
		"merged/bottom":        mapFile("bottom"),
		"merged/both":          mapFile("from l2"),
		"merged/hidden":        mapFile("hidden"),
		"opaque/theirs":        mapFile("l2"),
		"gone":                 mapFile("gone"),
		"dir-over-file":        mapFile("a file below a dir"),
		"only-in-l2/deep/file": mapFile("deep"),
	})
	o, _ := newOverlay(t, l1, l2)
	tests := []struct {
		name    string
		want    string // content, or "error: <errno text>"
		wantErr error
	}{
		{"file-over-dir", "top", nil},
		{"file-over-dir/child", "", syscall.ENOTDIR},
		{"merged/top", "top", nil},
		{"merged/bottom", "bottom", nil},
		{"merged/both", "from l1", nil},
		{"merged/hidden", "", fs.ErrNotExist},
		{"opaque/mine", "l1", nil},
		{"opaque/theirs", "", fs.ErrNotExist},
		{"gone", "", fs.ErrNotExist},
		{"dir-over-file/child", "c", nil},
		{"only-in-l2/deep/file", "deep", nil},
		{"/only-in-l2/deep/file", "deep", nil},
		{"/only-in-l2/../only-in-l2/deep/file", "deep", nil},
		{"missing", "", fs.ErrNotExist},
		{".wh.gone", "", syscall.EINVAL},
		{"merged/.wh.hidden", "", syscall.EINVAL},
		{"a\x00b", "", syscall.EINVAL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := afero.ReadFile(o, tt.name)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ReadFile(%q) = %q, %v, want error %v", tt.name, b, err, tt.wantErr)
				}
				var pe *fs.PathError
				if !errors.As(err, &pe) {
					t.Errorf("ReadFile(%q) error %T, want *fs.PathError", tt.name, err)
				}
				return
			}
			if err != nil || string(b) != tt.want {
				t.Fatalf("ReadFile(%q) = %q, %v, want %q", tt.name, b, err, tt.want)
			}
		})
	}
}

func TestLookupMergedDirStat(t *testing.T) {
	l1 := mapLayer(fstest.MapFS{"d": &fstest.MapFile{Mode: fs.ModeDir | 0o700}})
	l2 := mapLayer(fstest.MapFS{"d": &fstest.MapFile{Mode: fs.ModeDir | 0o755}, "d/x": mapFile("x")})
	o, _ := newOverlay(t, l1, l2)
	fi, err := o.Stat("d")
	if err != nil || fi.Mode().Perm() != 0o700 || fi.Name() != "d" {
		t.Fatalf("Stat(d) = %v, %v, want the topmost copy (0700)", fi, err)
	}
}

// TestLookupNameForms checks that every spelling of a name reaches lowers
// that key names differently: MemMapFs rooted, io/fs unrooted.
func TestLookupNameForms(t *testing.T) {
	mem := afero.NewMemMapFs()
	if err := afero.WriteFile(mem, "/etc/hosts", []byte("mem"), 0o644); err != nil {
		t.Fatal(err)
	}
	iofs := mapLayer(fstest.MapFS{"etc/passwd": mapFile("iofs")})
	d := t.TempDir()
	mustWrite(t, filepath.Join(d, "etc/group"), "base")
	base := afero.NewBasePathFs(afero.NewOsFs(), d)
	o, _ := newOverlay(t, mem, iofs, base)
	for _, name := range []string{"etc/hosts", "/etc/hosts", "/etc/../etc/hosts", "etc//hosts/"} {
		if got := readString(o, name); got != "mem" {
			t.Errorf("ReadFile(%q) = %q, want %q", name, got, "mem")
		}
	}
	for _, name := range []string{"etc/passwd", "/etc/passwd", "../etc/passwd"} {
		if got := readString(o, name); got != "iofs" {
			t.Errorf("ReadFile(%q) = %q, want %q", name, got, "iofs")
		}
	}
	if got := readString(o, "/etc/group"); got != "base" {
		t.Errorf("ReadFile(/etc/group) = %q, want %q", got, "base")
	}
}

// TestLookupSymlinksStayInside checks that symlinks on disk layers resolve
// in the merged view with chroot semantics, never on the host.
func TestLookupSymlinksStayInside(t *testing.T) {
	d := t.TempDir()
	mustWrite(t, filepath.Join(d, "etc/hosts"), "inside")
	links := map[string]string{
		"abs":     "/etc",
		"climb":   "../../../../etc",
		"rel":     "etc/hosts",
		"loop1":   "loop2",
		"loop2":   "loop1",
		"dangles": "nowhere",
		"self":    ".",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(d, name)); err != nil {
			t.Fatal(err)
		}
	}
	lower := afero.NewReadOnlyFs(afero.NewBasePathFs(afero.NewOsFs(), d))
	o, _ := newOverlay(t, lower)
	tests := []struct {
		name, want string
		wantErr    error
	}{
		{"abs/hosts", "inside", nil},
		{"climb/hosts", "inside", nil},
		{"rel", "inside", nil},
		{"self/self/rel", "inside", nil},
		{"abs/passwd", "", fs.ErrNotExist},
		{"loop1", "", syscall.ELOOP},
		{"dangles", "", fs.ErrNotExist},
	}
	for _, tt := range tests {
		b, err := afero.ReadFile(o, tt.name)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("ReadFile(%q) = %q, %v, want %v", tt.name, b, err, tt.wantErr)
			}
			continue
		}
		if err != nil || string(b) != tt.want {
			t.Errorf("ReadFile(%q) = %q, %v, want %q", tt.name, b, err, tt.want)
		}
	}
	if fi, _, err := o.LstatIfPossible("abs"); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("Lstat(abs) = %v, %v, want a symlink", fi, err)
	}
	if target, err := o.ReadlinkIfPossible("climb"); err != nil || target != links["climb"] {
		t.Errorf("Readlink(climb) = %q, %v, want %q", target, err, links["climb"])
	}
	if _, err := o.ReadlinkIfPossible("rel/.."); !errors.Is(err, syscall.EINVAL) && !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Readlink(rel/..) = %v, want EINVAL", err)
	}
}

// mustWrite writes data to the host file p, creating its parents.
func mustWrite(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestNewRejectsBadLayers(t *testing.T) {
	if _, err := New(nil, nil); err == nil {
		t.Error("New(nil, nil) = nil error, want an error")
	}
	if _, err := New(afero.NewMemMapFs(), []afero.Fs{nil}); err == nil {
		t.Error("New with a nil lower = nil error, want an error")
	}
	if _, err := New(nil, []afero.Fs{mapLayer(fstest.MapFS{})}); err != nil {
		t.Errorf("New(read-only) = %v, want nil", err)
	}
}
