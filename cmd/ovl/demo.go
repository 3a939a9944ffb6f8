package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay"
)

// demoEntry is one entry of a demo layer. A name ending in "/" is a
// directory; link is a symlink's target, or a hard link's with hard set.
type demoEntry struct {
	name string
	mode int64
	body string
	link string
	hard bool
}

// demoTime is the mtime of every demo entry, so that the layers are the
// same bytes whenever they are built.
var demoTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// The demo image: base is the bottom layer, app the top one, which edits it
// with every kind of entry a layer has.
var (
	demoBase = []demoEntry{
		{name: "bin/", mode: 0o755},
		{name: "bin/sh", mode: 0o755, body: "#!/bin/sh\necho tiny shell\n"},
		{name: "etc/", mode: 0o755},
		{name: "etc/hostname", mode: 0o644, body: "base\n"},
		{name: "etc/hosts", mode: 0o644, body: "127.0.0.1 localhost\n"},
		{name: "etc/motd", mode: 0o644, body: "Welcome to the base image.\n"},
		{name: "etc/os-release", mode: 0o644, body: "ID=tiny\nVERSION_ID=1\n"},
		{name: "lib", mode: 0o777, link: "usr/lib"},
		{name: "tmp/", mode: 0o1777},
		{name: "usr/", mode: 0o755},
		{name: "usr/lib/", mode: 0o755},
		{name: "usr/lib/libc.so", mode: 0o755, body: "libc\n"},
		{name: "usr/share/", mode: 0o755},
		{name: "usr/share/doc/", mode: 0o755},
		{name: "usr/share/doc/FAQ", mode: 0o644, body: "base FAQ\n"},
		{name: "usr/share/doc/README", mode: 0o644, body: "base docs\n"},
		{name: "var/", mode: 0o755},
		{name: "var/cache/", mode: 0o755},
		{name: "var/cache/index", mode: 0o644, body: "old index\n"},
		{name: "var/cache/pkg.bin", mode: 0o644, body: "old cache\n"},
	}
	demoApp = []demoEntry{
		{name: "app/", mode: 0o755},
		{name: "app/app.conf", mode: 0o644, body: "port = 8080\n"},
		{name: "app/app.conf.default", mode: 0o644, link: "app/app.conf", hard: true},
		{name: "app/server", mode: 0o755, body: "#!/bin/sh\necho serving on 8080\n"},
		{name: "etc/", mode: 0o755},
		{name: "etc/.wh.motd", mode: 0o644},
		{name: "etc/hostname", mode: 0o644, body: "app\n"},
		{name: "usr/", mode: 0o755},
		{name: "usr/share/", mode: 0o755},
		{name: "usr/share/.wh.doc", mode: 0o644},
		{name: "var/", mode: 0o755},
		{name: "var/cache/", mode: 0o755},
		{name: "var/cache/.wh..wh..opq", mode: 0o644},
		{name: "var/cache/app.db", mode: 0o644, body: "fresh\n"},
	}
)

// demoLayer returns the layer tar of entries.
func demoLayer(entries []demoEntry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range entries {
		hdr := &tar.Header{Name: d.name, Mode: d.mode, ModTime: demoTime, Typeflag: tar.TypeReg, Size: int64(len(d.body)), Linkname: d.link}
		switch {
		case strings.HasSuffix(d.name, "/"):
			hdr.Typeflag = tar.TypeDir
		case d.hard:
			hdr.Typeflag = tar.TypeLink
		case d.link != "":
			hdr.Typeflag = tar.TypeSymlink
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, d.body); err != nil {
			return nil, err
		}
	}
	err := tw.Close()
	return buf.Bytes(), err
}

var demoCommand = command{
	name:  "demo",
	args:  "[--write DIR]",
	about: "Tour a two-layer example image built in memory (the layers of testdata/layers/).",
	setup: func(fs *flag.FlagSet) runner {
		write := fs.String("write", "", "write the example layers base.tar and app.tar into `DIR` instead")
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usageError("no arguments expected")
			}
			base, app, err := demoLayers()
			if err != nil {
				return err
			}
			if *write != "" {
				return writeDemo(*write, base, app)
			}
			return demo(e.stdout, base, app)
		}
	},
}

// demoLayers builds the two demo layers.
func demoLayers() (base, app []byte, err error) {
	if base, err = demoLayer(demoBase); err != nil {
		return nil, nil, err
	}
	app, err = demoLayer(demoApp)
	return base, app, err
}

// writeDemo writes the demo layers into dir.
func writeDemo(dir string, base, app []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "base.tar"), base, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "app.tar"), app, 0o644)
}

// demo prints the tour.
func demo(w io.Writer, base, app []byte) error {
	baseFs, err := overlay.NewTarFs(bytes.NewReader(base), int64(len(base)))
	if err != nil {
		return err
	}
	appFs, err := overlay.NewTarFs(bytes.NewReader(app), int64(len(app)))
	if err != nil {
		return err
	}
	fmt.Fprint(w, "Two image layers, built in memory; `ovl demo --write DIR` saves them.\n\n")
	fmt.Fprintln(w, "base.tar, the bottom layer:")
	if err := listLayer(w, base); err != nil {
		return err
	}
	fmt.Fprint(w, "\napp.tar, stacked on top; its .wh. files are whiteouts and .wh..wh..opq an opaque marker:\n")
	if err := listLayer(w, app); err != nil {
		return err
	}
	o, err := overlay.New(afero.NewMemMapFs(), []afero.Fs{appFs, baseFs})
	if err != nil {
		return err
	}
	return demoView(w, o)
}

// demoView prints the merged view of the demo stack, then changes it.
func demoView(w io.Writer, o *overlay.Overlay) error {
	fmt.Fprint(w, "\nThe merged view (ovl tree --lower testdata/layers/app.tar --lower testdata/layers/base.tar):\n/\n")
	if err := tree(w, o, "/", ""); err != nil {
		return err
	}
	fmt.Fprint(w, "\n$ ovl cat ... /etc/hostname /lib/libc.so\n")
	for _, p := range []string{"/etc/hostname", "/lib/libc.so"} {
		if err := cat(w, o, p); err != nil {
			return err
		}
	}
	if err := demoEdit(o); err != nil {
		return err
	}
	fmt.Fprint(w, "\nAfter writing /etc/motd, removing /bin/sh and adding /app/data/ in a fresh upper,\nthe upper's changes (ovl diff):\n")
	changes, err := o.Changes()
	if err != nil {
		return err
	}
	for _, c := range changes {
		fmt.Fprintf(w, "  %v\n", c)
	}
	var layer bytes.Buffer
	if err := overlay.ExportLayer(&layer, o, overlay.ClampTimes(demoTime)); err != nil {
		return err
	}
	fmt.Fprint(w, "\nand the layer they export to (ovl export):\n")
	return listLayer(w, layer.Bytes())
}

// demoEdit makes the demo's changes in the upper of o.
func demoEdit(o *overlay.Overlay) error {
	if err := afero.WriteFile(o, "/etc/motd", []byte("Welcome back.\n"), 0o644); err != nil {
		return err
	}
	if err := o.Remove("/bin/sh"); err != nil {
		return err
	}
	return o.MkdirAll("/app/data", 0o750)
}

// listLayer prints the entries of a layer tar, as tar tv does.
func listLayer(w io.Writer, layer []byte) error {
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := hdr.Name
		switch hdr.Typeflag {
		case tar.TypeSymlink:
			name += " -> " + hdr.Linkname
		case tar.TypeLink:
			name += " link to " + hdr.Linkname
		}
		fmt.Fprintf(w, "  %v %5d  %s\n", hdr.FileInfo().Mode(), hdr.Size, name)
	}
}
