// Command restack builds an image in two steps, commits each step as a
// layer, exports the layers as OCI layer tars and stacks the tars again,
// opened in place as lowers of a new overlay, with no extraction.
//
// Step one writes into an overlay over a base image; Commit freezes that
// upper as a lower layer and step two goes on in a fresh upper. Each upper
// is exported (ExportLayer) as it is committed. The tars then open with
// NewTarFs and stack over the same base: the new overlay shows the same
// merged view, whiteouts and opaque directories included, and is itself
// writable.
//
// Run it with:
//
//	go run ./examples/restack
package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"log"
	"testing/fstest"
	"time"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay"
)

// clamp makes the exported layers the same bytes on every run.
var clamp = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

func main() {
	base := afero.FromIOFS{FS: fstest.MapFS{
		"etc/os-release":  {Data: []byte("ID=tiny\n"), Mode: 0o644},
		"etc/motd":        {Data: []byte("base motd\n"), Mode: 0o644},
		"var/cache/old":   {Data: []byte("stale\n"), Mode: 0o644},
		"usr/bin/tool":    {Data: []byte("#!tool\n"), Mode: 0o755},
		"usr/share/doc/x": {Data: []byte("docs\n"), Mode: 0o644},
	}}
	o, err := overlay.New(afero.NewMemMapFs(), []afero.Fs{base})
	check(err)

	check(step1(o))
	layer1 := commit(o, "step 1: install the app, drop the docs")
	check(step2(o))
	layer2 := commit(o, "step 2: configure, rebuild the cache")

	// Restack: the tars, opened in place, over the same base.
	img := restack(base, layer2, layer1)
	fmt.Println("\nthe restacked image (layer2.tar, layer1.tar, base):")
	check(printTree(img))
	fmt.Println("\nsame view as the committed overlay:", sameView(o, img))
}

// step1 installs an app and removes the docs.
func step1(o afero.Fs) error {
	if err := o.MkdirAll("app", 0o755); err != nil {
		return err
	}
	if err := afero.WriteFile(o, "app/app.conf", []byte("port = 80\n"), 0o644); err != nil {
		return err
	}
	return o.RemoveAll("usr/share/doc")
}

// step2 reconfigures the app and replaces the cache wholesale.
func step2(o afero.Fs) error {
	if err := afero.WriteFile(o, "app/app.conf", []byte("port = 8080\n"), 0o644); err != nil {
		return err
	}
	if err := o.Remove("etc/motd"); err != nil {
		return err
	}
	if err := o.RemoveAll("var/cache"); err != nil {
		return err
	}
	if err := o.Mkdir("var/cache", 0o755); err != nil {
		return err
	}
	return afero.WriteFile(o, "var/cache/index", []byte("fresh\n"), 0o644)
}

// commit prints the step's changes, exports its upper as a layer tar and
// commits it, so that the next step starts in a fresh upper.
func commit(o *overlay.Overlay, step string) []byte {
	changes, err := o.Changes()
	check(err)
	fmt.Printf("%s\n  changes: %v\n", step, changes)
	var layer bytes.Buffer
	check(overlay.ExportLayer(&layer, o, overlay.ClampTimes(clamp)))
	fmt.Printf("  layer:  %d bytes\n", layer.Len())
	check(o.Commit(afero.NewMemMapFs()))
	return layer.Bytes()
}

// restack opens the layer tars (topmost first) in place and stacks them
// over base, under a fresh writable upper.
func restack(base afero.Fs, layers ...[]byte) *overlay.Overlay {
	var lowers []afero.Fs
	for _, l := range layers {
		tfs, err := overlay.NewTarFs(bytes.NewReader(l), int64(len(l)))
		check(err)
		lowers = append(lowers, tfs)
	}
	img, err := overlay.New(afero.NewMemMapFs(), append(lowers, base))
	check(err)
	return img
}

// sameView reports whether two overlays show the same names and contents.
func sameView(a, b afero.Fs) bool {
	da, db := describe(a), describe(b)
	return da == db
}

// describe returns every name of fsys with its content.
func describe(fsys afero.Fs) string {
	var out bytes.Buffer
	check(afero.Walk(fsys, "/", func(p string, info fs.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			fmt.Fprintln(&out, p)
			return err
		}
		b, err := afero.ReadFile(fsys, p)
		fmt.Fprintf(&out, "%s %q\n", p, b)
		return err
	}))
	return out.String()
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
		fmt.Printf("  %-18s %q\n", p, b)
		return err
	})
}

// check stops the program on an error.
func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
