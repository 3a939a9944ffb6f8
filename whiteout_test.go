package overlay

import (
	"errors"
	"io/fs"
	"syscall"
	"testing"
	"testing/fstest"

	"github.com/spf13/afero"
)

func TestHiddenName(t *testing.T) {
	tests := []struct {
		base   string
		hides  string
		isWh   bool
		isResv bool
	}{
		{".wh.x", "x", true, true},
		{".wh..wh..opq", "", false, true},
		{".wh..wh.work", "", false, true},
		{"x", "", false, false},
		{".whx", "", false, false},
	}
	for _, tt := range tests {
		hides, ok := hiddenName(tt.base)
		if hides != tt.hides || ok != tt.isWh {
			t.Errorf("hiddenName(%q) = %q, %v, want %q, %v", tt.base, hides, ok, tt.hides, tt.isWh)
		}
		if got := isReserved(tt.base); got != tt.isResv {
			t.Errorf("isReserved(%q) = %v, want %v", tt.base, got, tt.isResv)
		}
	}
}

// TestRemoveMarkers checks what each kind of removal leaves in the upper.
func TestRemoveMarkers(t *testing.T) {
	lower := mapLayer(fstest.MapFS{
		"lower-only": mapFile("l"),
		"shadowed":   mapFile("l"),
		"lowerdir/a": mapFile("a"),
		"emptied/a":  mapFile("a"),
		"full/a":     mapFile("a"),
	})
	tests := []struct {
		name      string
		prepare   func(o *Overlay) error
		remove    string
		wantErr   error
		whiteout  bool // whether the upper must hold .wh.<name>
		upperGone bool // whether the upper must no longer hold <name>
	}{
		{name: "lower file", remove: "lower-only", whiteout: true, upperGone: true},
		{name: "upper file shadowing a lower one", remove: "shadowed", whiteout: true, upperGone: true,
			prepare: func(o *Overlay) error { return afero.WriteFile(o, "shadowed", []byte("u"), 0o644) }},
		{name: "upper-only file", remove: "new", whiteout: false, upperGone: true,
			prepare: func(o *Overlay) error { return afero.WriteFile(o, "new", []byte("u"), 0o644) }},
		{name: "upper-only dir", remove: "newdir", whiteout: false, upperGone: true,
			prepare: func(o *Overlay) error { return o.Mkdir("newdir", 0o755) }},
		{name: "dir emptied of lower files", remove: "emptied", whiteout: true, upperGone: true,
			prepare: func(o *Overlay) error { return o.Remove("emptied/a") }},
		{name: "non-empty merged dir", remove: "full", wantErr: syscall.ENOTEMPTY},
		{name: "missing", remove: "missing", wantErr: fs.ErrNotExist},
		{name: "root", remove: "/", wantErr: syscall.EBUSY},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, upper := newOverlay(t, lower)
			if tt.prepare != nil {
				if err := tt.prepare(o); err != nil {
					t.Fatalf("prepare: %v", err)
				}
			}
			err := o.Remove(tt.remove)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Remove(%q) = %v, want %v", tt.remove, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Remove(%q) = %v", tt.remove, err)
			}
			if _, err := o.Stat(tt.remove); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Stat(%q) after Remove = %v, want ErrNotExist", tt.remove, err)
			}
			if got, _ := afero.Exists(upper, "/.wh."+tt.remove); got != tt.whiteout {
				t.Errorf("upper holds .wh.%s = %v, want %v", tt.remove, got, tt.whiteout)
			}
			if got, _ := afero.Exists(upper, "/"+tt.remove); got == tt.upperGone {
				t.Errorf("upper holds %s = %v, want %v", tt.remove, got, !tt.upperGone)
			}
		})
	}
}

// TestMkdirOverWhiteoutIsOpaque checks that a directory recreated where a
// lower one was deleted hides the old contents, and that an opaque marker
// and whiteouts never show in listings.
func TestMkdirOverWhiteoutIsOpaque(t *testing.T) {
	lower := mapLayer(fstest.MapFS{"d/old": mapFile("old"), "d/sub/x": mapFile("x")})
	o, upper := newOverlay(t, lower)
	if err := o.RemoveAll("d"); err != nil {
		t.Fatal(err)
	}
	if err := o.Mkdir("d", 0o750); err != nil {
		t.Fatal(err)
	}
	names := readDirNames(t, o, "d")
	if len(names) != 0 {
		t.Errorf("Readdirnames(d) = %q, want none", names)
	}
	if ok, _ := afero.Exists(upper, "/d/"+opaqueMarker); !ok {
		t.Error("upper d is not opaque")
	}
	if ok, _ := afero.Exists(upper, "/.wh.d"); ok {
		t.Error("upper still holds the whiteout .wh.d")
	}
	if fi, err := o.Stat("d"); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("Stat(d) = %v, %v, want mode 0750", fi, err)
	}
}

func TestReservedNamesRefused(t *testing.T) {
	o, _ := newOverlay(t, mapLayer(fstest.MapFS{"a": mapFile("a")}))
	checks := map[string]error{
		"Create":  func() error { _, err := o.Create(".wh.x"); return err }(),
		"Mkdir":   o.Mkdir("d/.wh..wh..opq", 0o755),
		"Rename":  o.Rename("a", ".wh.a"),
		"Symlink": o.SymlinkIfPossible("a", ".wh.l"),
		"Stat":    func() error { _, err := o.Stat(".wh..wh.work"); return err }(),
	}
	for op, err := range checks {
		if !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%s of a .wh. name = %v, want EINVAL", op, err)
		}
	}
}

// readDirNames lists name in fsys through Open and Readdirnames.
func readDirNames(t *testing.T, fsys afero.Fs, name string) []string {
	t.Helper()
	f, err := fsys.Open(name)
	if err != nil {
		t.Fatalf("Open(%q): %v", name, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		t.Fatalf("Readdirnames(%q): %v", name, err)
	}
	return names
}
