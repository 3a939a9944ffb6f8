// Command layers builds a container-style image one layer at a time, the
// way a Dockerfile build does: each step runs on an overlay with a fresh
// upper over all the layers so far, and when the step is done its upper is
// frozen (wrapped read-only) and becomes the topmost lower of the next step.
//
// Because an upper is written in the OCI image-layer format, every frozen
// upper is that step's diff: changed files are plain files, deletions are
// ".wh.NAME" whiteouts, and a directory replaced wholesale holds an opaque
// marker, ".wh..wh..opq". Lowers in that format are honoured, so a whiteout
// left by one step hides the file in all the layers below it.
//
// Run it with:
//
//	go run ./examples/layers
package main

import (
	"fmt"
	"io/fs"
	"log"
	"path"
	"strings"
	"testing/fstest"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay"
)

// step is one build step: a name and what it does to the image.
type step struct {
	name string
	run  func(fsys afero.Fs) error
}

func main() {
	base := afero.FromIOFS{FS: fstest.MapFS{
		"etc/os-release":       {Data: []byte("ID=tiny\n"), Mode: 0o644},
		"bin/sh":               {Data: []byte("#!sh\n"), Mode: 0o755},
		"usr/share/doc/README": {Data: []byte("docs\n"), Mode: 0o644},
		"usr/share/doc/FAQ":    {Data: []byte("faq\n"), Mode: 0o644},
		"tmp":                  {Mode: fs.ModeDir | 0o777},
	}}
	steps := []step{
		{"install the app, drop the docs", func(fsys afero.Fs) error {
			if err := fsys.MkdirAll("app", 0o755); err != nil {
				return err
			}
			if err := afero.WriteFile(fsys, "app/app.conf", []byte("port = 80\n"), 0o644); err != nil {
				return err
			}
			return fsys.RemoveAll("usr/share/doc")
		}},
		{"configure, ship new docs", func(fsys afero.Fs) error {
			if err := afero.WriteFile(fsys, "app/app.conf", []byte("port = 8080\n"), 0o644); err != nil {
				return err
			}
			if err := fsys.Mkdir("usr/share/doc", 0o755); err != nil {
				return err
			}
			return afero.WriteFile(fsys, "usr/share/doc/app.md", []byte("# app\n"), 0o644)
		}},
		{"rename the app dir", func(fsys afero.Fs) error {
			return fsys.Rename("app", "opt")
		}},
	}

	lowers := []afero.Fs{base} // topmost first
	for i, st := range steps {
		upper := afero.NewMemMapFs()
		img, err := overlay.New(upper, lowers)
		if err != nil {
			log.Fatal(err)
		}
		if err := st.run(img); err != nil {
			log.Fatalf("step %d (%s): %v", i+1, st.name, err)
		}
		fmt.Printf("layer %d, %s:\n", i+1, st.name)
		if err := printDiff(upper); err != nil {
			log.Fatal(err)
		}
		// Freeze the step's upper: from now on it is a read-only lower.
		lowers = append([]afero.Fs{afero.NewReadOnlyFs(upper)}, lowers...)
	}

	// The finished image: all the layers, read-only (nil upper).
	img, err := overlay.New(nil, lowers)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("\nimage (%d layers):\n", len(lowers))
	if err := printTree(img); err != nil {
		log.Fatal(err)
	}
}

// printDiff prints a layer's entries as an image-layer diff: "+" for a file
// or directory the layer holds, "-" for a whiteout, and "opaque" for a
// directory that hides what the layers below had in it. The overlay's work
// directory is skipped.
func printDiff(layer afero.Fs) error {
	return afero.Walk(layer, "/", func(p string, info fs.FileInfo, err error) error {
		if err != nil || p == "/" {
			return err
		}
		dir, base := path.Split(p)
		switch {
		case base == ".wh..wh..opq":
			fmt.Printf("  opaque %s\n", dir)
		case strings.HasPrefix(base, ".wh..wh."):
			if info.IsDir() {
				return fs.SkipDir
			}
		case strings.HasPrefix(base, ".wh."):
			fmt.Printf("  -      %s%s\n", dir, strings.TrimPrefix(base, ".wh."))
		case info.IsDir():
			fmt.Printf("  +      %s/\n", p)
		default:
			fmt.Printf("  +      %s\n", p)
		}
		return nil
	})
}

// printTree prints every file of fsys with its content.
func printTree(fsys afero.Fs) error {
	return afero.Walk(fsys, "/", func(p string, info fs.FileInfo, err error) error {
		if err != nil || p == "/" {
			return err
		}
		if info.IsDir() {
			fmt.Printf("  %s/\n", p)
			return nil
		}
		b, err := afero.ReadFile(fsys, p)
		fmt.Printf("  %-22s %v %q\n", p, info.Mode(), b)
		return err
	})
}
