package overlay

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/afero"
)

// handleScenario opens handles, changes names under them and reports what
// the handles then show, one line per observation, so that the overlay's
// lines can be compared with a kernel mount's.
type handleScenario struct {
	name   string
	lowers []layerSpec
	open   string // the name whose handle run gets, closed after it
	run    func(fsys afero.Fs, f afero.File, r *handleReport)
}

// play opens sc.open in fsys, runs sc on the handle, closes it and returns
// what was seen.
func (sc handleScenario) play(fsys afero.Fs) handleReport {
	var r handleReport
	f, err := fsys.Open(sc.open)
	if err != nil {
		must(&r, "open", err)
		return r
	}
	sc.run(fsys, f, &r)
	must(&r, "close", f.Close())
	return r
}

// handleReport collects a scenario's observations.
type handleReport struct{ lines []string }

// note records what a call returned: its errno (or "ok") and a value.
func (r *handleReport) note(what string, v any, err error) {
	r.lines = append(r.lines, fmt.Sprintf("%s: %s %v", what, errnoName(err), v))
}

// errnoName names err's errno, "ok" for nil, "EOF" for io.EOF.
func errnoName(err error) string {
	var errno syscall.Errno
	switch {
	case err == nil:
		return "ok"
	case err == io.EOF:
		return "EOF"
	case errors.As(err, &errno):
		return fmt.Sprintf("errno %d", int(errno))
	}
	return "error without errno: " + err.Error()
}

// must fails the scenario run if a setup step fails.
func must(r *handleReport, what string, err error) {
	if err != nil {
		r.note("setup "+what, nil, err)
	}
}

// readAll reads what is left in f.
func readAll(f afero.File) (string, error) {
	b, err := io.ReadAll(f)
	return string(b), err
}

// names lists the rest of the directory handle f, sorted (the kernel's
// order is not).
func names(f afero.File) ([]string, error) {
	n, err := f.Readdirnames(-1)
	slices.Sort(n)
	return n, err
}

var handleScenarios = []handleScenario{
	{
		name:   "directory handle follows a rename",
		lowers: []layerSpec{{"d/a": specFile("a", 0o644)}},
		open:   "d",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			must(r, "rename", fsys.Rename("d", "e"))
			must(r, "mkdir", fsys.Mkdir("d", 0o755))
			must(r, "write", afero.WriteFile(fsys, "d/new", nil, 0o644))
			n, err := names(f)
			r.note("readdir after rename", n, err)
			_, err = f.Seek(0, io.SeekStart)
			must(r, "seek", err)
			must(r, "rename again", fsys.Rename("e", "e2"))
			n, err = names(f)
			r.note("readdir after rewind and rename", n, err)
		},
	},
	{
		name:   "directory handle follows its parent's rename",
		lowers: []layerSpec{{"p/d/a": specFile("a", 0o644), "p/d/b": specFile("b", 0o644)}},
		open:   "p/d",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			must(r, "remove", fsys.Remove("p/d/b"))
			must(r, "rename", fsys.Rename("p", "q"))
			n, err := names(f)
			r.note("readdir after parent rename", n, err)
		},
	},
	{
		name:   "directory handle of a removed directory",
		lowers: []layerSpec{{"g/x": specFile("x", 0o644)}},
		open:   "g",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			must(r, "remove file", fsys.Remove("g/x"))
			must(r, "remove dir", fsys.Remove("g"))
			must(r, "mkdir", fsys.Mkdir("g", 0o755))
			must(r, "write", afero.WriteFile(fsys, "g/y", nil, 0o644))
			n, err := names(f)
			r.note("readdir after remove", n, err)
		},
	},
	{
		name:   "directory handle read before the removal keeps its listing",
		lowers: []layerSpec{{"g/x": specFile("x", 0o644), "g/y": specFile("y", 0o644)}},
		open:   "g",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			first, err := f.Readdirnames(1)
			r.note("first entry count", len(first), err)
			must(r, "remove all", fsys.RemoveAll("g"))
			rest, err := f.Readdirnames(-1)
			r.note("rest count", len(rest), err)
		},
	},
	{
		name:   "read handle on a file that a rename replaced",
		lowers: []layerSpec{{"a": specFile("A", 0o644), "b": specFile("B", 0o644)}},
		open:   "b",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			must(r, "rename a b", fsys.Rename("a", "b"))
			must(r, "rename b c", fsys.Rename("b", "c"))
			must(r, "write c", afero.WriteFile(fsys, "c", []byte("C"), 0o644))
			s, err := readAll(f)
			r.note("read", s, err)
		},
	},
	{
		name:   "read handle follows a rename, then a copy-up",
		lowers: []layerSpec{{"a": specFile("A", 0o644)}},
		open:   "a",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			must(r, "rename", fsys.Rename("a", "b"))
			must(r, "write", afero.WriteFile(fsys, "b", []byte("new"), 0o644))
			s, err := readAll(f)
			r.note("read", s, err)
		},
	},
	{
		name:   "read handle on a removed file keeps reading it",
		lowers: []layerSpec{{"a": specFile("old", 0o644)}},
		open:   "a",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			must(r, "remove", fsys.Remove("a"))
			must(r, "write", afero.WriteFile(fsys, "a", []byte("new"), 0o644))
			s, err := readAll(f)
			r.note("read", s, err)
		},
	},
	{
		name:   "read handle on a copied-up file that was removed and made again",
		lowers: []layerSpec{{"a": specFile("old", 0o644)}},
		open:   "a",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			must(r, "write", afero.WriteFile(fsys, "a", []byte("new"), 0o644))
			must(r, "remove", fsys.Remove("a"))
			must(r, "write again", afero.WriteFile(fsys, "a", []byte("newer"), 0o644))
			s, err := readAll(f)
			r.note("read", s, err)
		},
	},
	{
		name:   "read handle on a copied-up file that was removed",
		lowers: []layerSpec{{"a": specFile("old", 0o644)}},
		open:   "a",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			must(r, "write", afero.WriteFile(fsys, "a", []byte("new"), 0o644))
			must(r, "remove", fsys.Remove("a"))
			s, err := readAll(f)
			r.note("read", s, err)
		},
	},
	{
		name:   "read handle on a renamed file whose new name was replaced",
		lowers: []layerSpec{{"a": specFile("old", 0o644)}},
		open:   "a",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			must(r, "rename", fsys.Rename("a", "b"))
			must(r, "remove", fsys.Remove("b"))
			must(r, "write", afero.WriteFile(fsys, "b", []byte("newer"), 0o644))
			s, err := readAll(f)
			r.note("read", s, err)
		},
	},
	{
		name:   "read handle on a file whose directory was renamed, then written",
		lowers: []layerSpec{{"d/a": specFile("old", 0o644), "d/b": specFile("b", 0o644)}},
		open:   "d/a",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			must(r, "rename", fsys.Rename("d", "e"))
			must(r, "write", afero.WriteFile(fsys, "e/a", []byte("new"), 0o644))
			s, err := readAll(f)
			r.note("read", s, err)
		},
	},
	{
		name:   "read handle on a file whose directory was renamed and removed",
		lowers: []layerSpec{{"d/a": specFile("old", 0o644)}},
		open:   "d/a",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			must(r, "rename", fsys.Rename("d", "e"))
			must(r, "write", afero.WriteFile(fsys, "e/a", []byte("new"), 0o644))
			must(r, "remove", fsys.RemoveAll("e"))
			must(r, "mkdir", fsys.MkdirAll("e", 0o755))
			must(r, "write again", afero.WriteFile(fsys, "e/a", []byte("newer"), 0o644))
			s, err := readAll(f)
			r.note("read", s, err)
		},
	},
	{
		name:   "read handle follows a copy-up that truncated the file",
		lowers: []layerSpec{{"a": specFile("lower content", 0o644)}},
		open:   "a",
		run: func(fsys afero.Fs, f afero.File, r *handleReport) {
			b := make([]byte, 3)
			n, err := f.Read(b)
			r.note("first read", string(b[:n]), err)
			w, err := fsys.OpenFile("a", os.O_WRONLY|os.O_TRUNC, 0)
			must(r, "open for writing", err)
			if w != nil {
				_, err = w.Write([]byte("upper content, longer"))
				must(r, "write", err)
				must(r, "close writer", w.Close())
			}
			s, err := readAll(f)
			r.note("rest", s, err)
		},
	},
}

// TestHandlesAgainstKernel runs each handle scenario on a kernel overlay
// mount and on the overlay (MemMapFs layers, disk layers, and a
// kernel-format upper, where a directory rename leaves its files below)
// and compares what the handles showed.
func TestHandlesAgainstKernel(t *testing.T) {
	for _, sc := range handleScenarios {
		t.Run(sc.name, func(t *testing.T) {
			want := sc.play(kernelOracle(t, sc.lowers...))
			for _, l := range want.lines {
				if strings.HasPrefix(l, "setup ") {
					t.Fatalf("scenario out of date: on the kernel, %s", l)
				}
			}
			subjects := map[string]afero.Fs{
				"mem layers":          buildSubject(t, memLayers, sc.lowers...),
				"disk layers":         buildSubject(t, diskLayers, sc.lowers...),
				"kernel-format upper": newKernelFormatStack(t, sc.lowers...).o,
			}
			for what, fsys := range subjects {
				got := sc.play(fsys)
				if w, g := strings.Join(want.lines, "\n"), strings.Join(got.lines, "\n"); w != g {
					t.Errorf("%s:\nkernel:\n%s\noverlay:\n%s", what, w, g)
				}
			}
		})
	}
}
