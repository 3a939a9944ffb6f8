package overlay

import (
	"io/fs"
	"slices"
	"testing"
	"testing/fstest"
	"time"

	"github.com/spf13/afero"
)

// ltMap returns a read-only lower layer holding files (names ending in "/"
// are directories), so that a write to it fails.
func ltMap(files map[string]string) afero.Fs {
	m := fstest.MapFS{}
	for name, data := range files {
		if name[len(name)-1] == '/' {
			m[name[:len(name)-1]] = &fstest.MapFile{Mode: fs.ModeDir | 0o755, ModTime: ltTime}
			continue
		}
		m[name] = &fstest.MapFile{Data: []byte(data), Mode: 0o644, ModTime: ltTime}
	}
	return afero.FromIOFS{FS: m}
}

// ltChanges returns o's changes as docker diff prints them.
func ltChanges(t testing.TB, o *Overlay) []string {
	t.Helper()
	changes, err := o.Changes()
	if err != nil {
		t.Fatalf("Changes() = %v", err)
	}
	out := []string{}
	for _, c := range changes {
		out = append(out, c.String())
	}
	return out
}

func TestChanges(t *testing.T) {
	lower := map[string]string{"etc/": "", "etc/hosts": "h", "etc/motd": "m", "var/": "", "var/cache/": "", "var/cache/a": "a", "var/cache/b": "b", ".hidden": "x"}
	tests := []struct {
		name string
		ops  func(o *Overlay) error
		want []string
	}{
		{"nothing", func(*Overlay) error { return nil }, []string{}},
		{"add a file", func(o *Overlay) error {
			return afero.WriteFile(o, "etc/new", []byte("n"), 0o644)
		}, []string{"C /etc", "A /etc/new"}},
		{"modify a file", func(o *Overlay) error {
			return afero.WriteFile(o, "etc/hosts", []byte("H"), 0o644)
		}, []string{"C /etc/hosts"}},
		{"chmod only", func(o *Overlay) error {
			return o.Chmod("etc/hosts", 0o600)
		}, []string{"C /etc/hosts"}},
		{"chtimes to the same times", func(o *Overlay) error {
			return o.Chtimes("etc/hosts", ltTime, ltTime)
		}, []string{"C /etc/hosts"}},
		{"touch a dir", func(o *Overlay) error {
			return o.Chtimes("var/cache", ltTime, ltTime.Add(time.Hour))
		}, []string{"C /var/cache"}},
		{"delete a file", func(o *Overlay) error {
			return o.Remove("etc/motd")
		}, []string{"C /etc", "D /etc/motd"}},
		{"delete a hidden file", func(o *Overlay) error {
			return o.Remove(".hidden")
		}, []string{"D /.hidden"}},
		{"delete a tree", func(o *Overlay) error {
			return o.RemoveAll("var")
		}, []string{"D /var"}},
		{"opaque dir", func(o *Overlay) error {
			return ltSteps(o.RemoveAll("var/cache"), o.Mkdir("var/cache", 0o755),
				afero.WriteFile(o, "var/cache/new", []byte("n"), 0o644))
		}, []string{"C /var", "C /var/cache", "D /var/cache/a", "D /var/cache/b", "A /var/cache/new"}},
		{"rename a dir", func(o *Overlay) error {
			return o.Rename("etc", "conf")
		}, []string{"A /conf", "A /conf/hosts", "A /conf/motd", "D /etc"}},
		{"new tree", func(o *Overlay) error {
			return ltSteps(o.MkdirAll("new/a/b", 0o755), afero.WriteFile(o, "new/a/b/f", []byte("f"), 0o644))
		}, []string{"A /new", "A /new/a", "A /new/a/b", "A /new/a/b/f"}},
		{"file becomes a dir", func(o *Overlay) error {
			return ltSteps(o.Remove("etc/hosts"), o.Mkdir("etc/hosts", 0o755), afero.WriteFile(o, "etc/hosts/x", nil, 0o644))
		}, []string{"C /etc", "C /etc/hosts", "A /etc/hosts/x"}},
		{"dir becomes a file", func(o *Overlay) error {
			return ltSteps(o.RemoveAll("var/cache"), afero.WriteFile(o, "var/cache", nil, 0o644))
		}, []string{"C /var", "C /var/cache"}},
		{"added then removed", func(o *Overlay) error {
			return ltSteps(afero.WriteFile(o, "tmp", nil, 0o644), o.Remove("tmp"))
		}, []string{}},
		{"removed then restored", func(o *Overlay) error {
			return ltSteps(o.Remove(".hidden"), afero.WriteFile(o, ".hidden", []byte("x"), 0o644))
		}, []string{"C /.hidden"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := New(afero.NewMemMapFs(), []afero.Fs{ltMap(lower)})
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.ops(o); err != nil {
				t.Fatal(err)
			}
			if got := ltChanges(t, o); !slices.Equal(got, tt.want) {
				t.Errorf("Changes() = %q, want %q", got, tt.want)
			}
		})
	}
}

// ltSteps returns the first error of steps already run.
func ltSteps(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// TestChangesAcrossLowers checks that the lowers are seen as one view:
// their own whiteouts and opaque directories count, and a name that only a
// deeper lower holds is still a modification.
func TestChangesAcrossLowers(t *testing.T) {
	top := ltMap(map[string]string{".wh.gone": "", "d/": "", "d/.wh..wh..opq": "", "d/top": "t"})
	bottom := ltMap(map[string]string{"gone": "g", "d/old": "o", "deep": "d"})
	o, err := New(afero.NewMemMapFs(), []afero.Fs{top, bottom})
	if err != nil {
		t.Fatal(err)
	}
	ltMust(t, afero.WriteFile(o, "gone", []byte("back"), 0o644))
	ltMust(t, afero.WriteFile(o, "d/old", []byte("back"), 0o644))
	ltMust(t, afero.WriteFile(o, "deep", []byte("D"), 0o644))
	ltMust(t, o.Remove("d/top"))
	want := []string{"C /d", "A /d/old", "D /d/top", "C /deep", "A /gone"}
	if got := ltChanges(t, o); !slices.Equal(got, want) {
		t.Errorf("Changes() = %q, want %q", got, want)
	}
}

func TestChangesReadOnly(t *testing.T) {
	o, err := New(nil, []afero.Fs{ltMap(map[string]string{"a": "a"})})
	if err != nil {
		t.Fatal(err)
	}
	if changes, err := o.Changes(); changes != nil || err != nil {
		t.Errorf("Changes() = %v, %v; want nil, nil", changes, err)
	}
}

func TestChangeStrings(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{Added.String(), "Added"},
		{Modified.String(), "Modified"},
		{Deleted.String(), "Deleted"},
		{ChangeKind(0).String(), "ChangeKind(0)"},
		{Change{Path: "etc/motd", Kind: Added}.String(), "A /etc/motd"},
		{Change{Path: ".hidden", Kind: Modified}.String(), "C /.hidden"},
		{Change{Path: "tmp", Kind: Deleted}.String(), "D /tmp"},
		{Change{Path: ".", Kind: Modified}.String(), "C /"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("String() = %q, want %q", tt.got, tt.want)
		}
	}
}
