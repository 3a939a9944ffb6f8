package overlay_test

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"log"
	"testing/fstest"
	"time"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay"
)

// baseImage returns a read-only lower layer holding files, name → content.
func baseImage(files map[string]string) afero.Fs {
	m := fstest.MapFS{}
	for name, data := range files {
		m[name] = &fstest.MapFile{Data: []byte(data), Mode: 0o644}
	}
	return afero.FromIOFS{FS: m}
}

// tarEntries returns the entry names of a layer tar.
func tarEntries(layer []byte) []string {
	tr := tar.NewReader(bytes.NewReader(layer))
	var out []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			log.Fatal(err)
		}
		out = append(out, hdr.Name)
	}
}

// Changes lists what the upper changes, as docker diff does.
func ExampleOverlay_Changes() {
	base := baseImage(map[string]string{
		"etc/hosts":   "127.0.0.1 localhost\n",
		"etc/motd":    "welcome\n",
		"var/cache/a": "old\n",
	})
	o, err := overlay.New(afero.NewMemMapFs(), []afero.Fs{base})
	if err != nil {
		log.Fatal(err)
	}
	_ = afero.WriteFile(o, "etc/hosts", []byte("::1 localhost\n"), 0o644)
	_ = o.Remove("etc/motd")
	_ = afero.WriteFile(o, "etc/hostname", []byte("box\n"), 0o644)
	_ = o.RemoveAll("var/cache")

	changes, err := o.Changes()
	if err != nil {
		log.Fatal(err)
	}
	for _, c := range changes {
		fmt.Println(c)
	}
	fmt.Println(changes[1].Path, changes[1].Kind)
	// Output:
	// C /etc
	// A /etc/hostname
	// C /etc/hosts
	// D /etc/motd
	// C /var
	// D /var/cache
	// etc/hostname Added
}

// Commit freezes the upper as a lower layer; later changes start afresh in
// the new upper.
func ExampleOverlay_Commit() {
	upper := afero.NewMemMapFs()
	o, err := overlay.New(upper, []afero.Fs{baseImage(map[string]string{"app/v": "1\n"})})
	if err != nil {
		log.Fatal(err)
	}
	_ = afero.WriteFile(o, "app/v", []byte("2\n"), 0o644)
	if err := o.Commit(afero.NewMemMapFs()); err != nil {
		log.Fatal(err)
	}
	_ = afero.WriteFile(o, "app/v", []byte("3\n"), 0o644)

	changes, _ := o.Changes()
	fmt.Println(changes)
	committed, _ := afero.ReadFile(upper, "/app/v")
	merged, _ := afero.ReadFile(o, "app/v")
	fmt.Printf("committed %q, merged %q\n", committed, merged)
	// Output:
	// [C /app/v]
	// committed "2\n", merged "3\n"
}

// Reset throws every change away.
func ExampleOverlay_Reset() {
	o, err := overlay.New(afero.NewMemMapFs(), []afero.Fs{baseImage(map[string]string{"config": "default\n"})})
	if err != nil {
		log.Fatal(err)
	}
	_ = afero.WriteFile(o, "config", []byte("tuned\n"), 0o644)
	_ = afero.WriteFile(o, "scratch", []byte("tmp\n"), 0o644)
	if err := o.Reset(); err != nil {
		log.Fatal(err)
	}
	config, _ := afero.ReadFile(o, "config")
	_, err = o.Stat("scratch")
	fmt.Printf("%q %v\n", config, err)
	// Output:
	// "default\n" stat scratch: no such file or directory
}

// ExportLayer writes the upper as an image layer: deletions become
// whiteouts and a recreated directory an opaque one.
func ExampleExportLayer() {
	base := baseImage(map[string]string{"etc/motd": "hi\n", "cache/old": "x"})
	o, err := overlay.New(afero.NewMemMapFs(), []afero.Fs{base})
	if err != nil {
		log.Fatal(err)
	}
	_ = o.Remove("etc/motd")
	_ = o.RemoveAll("cache")
	_ = o.Mkdir("cache", 0o755)
	_ = afero.WriteFile(o, "cache/new", []byte("y"), 0o644)

	var layer bytes.Buffer
	clamp := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := overlay.ExportLayer(&layer, o, overlay.ClampTimes(clamp)); err != nil {
		log.Fatal(err)
	}
	for _, name := range tarEntries(layer.Bytes()) {
		fmt.Println(name)
	}
	// Output:
	// cache/
	// cache/.wh..wh..opq
	// cache/new
	// etc/
	// etc/.wh.motd
}

// ApplyLayer unpacks a layer onto a tree, as containerd does: whiteouts
// delete what the layers below left.
func ExampleApplyLayer() {
	rootfs := afero.NewMemMapFs()
	_ = afero.WriteFile(rootfs, "/etc/motd", []byte("hi\n"), 0o644)
	_ = afero.WriteFile(rootfs, "/etc/hosts", []byte("127.0.0.1\n"), 0o644)

	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	_ = tw.WriteHeader(&tar.Header{Name: "etc/.wh.motd", Mode: 0o644})
	_ = tw.WriteHeader(&tar.Header{Name: "etc/hosts", Mode: 0o644, Size: 4})
	_, _ = tw.Write([]byte("::1\n"))
	_ = tw.Close()

	if err := overlay.ApplyLayer(rootfs, &layer); err != nil {
		log.Fatal(err)
	}
	hosts, _ := afero.ReadFile(rootfs, "/etc/hosts")
	_, err := rootfs.Stat("/etc/motd")
	fmt.Printf("%q %v\n", hosts, err != nil)
	// Output:
	// "::1\n" true
}

// A layer tar opens in place and stacks as a lower layer: its whiteouts
// hide what the layers below hold.
func ExampleNewTarFs() {
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	_ = tw.WriteHeader(&tar.Header{Name: "etc/.wh.motd", Mode: 0o644})
	_ = tw.WriteHeader(&tar.Header{Name: "etc/app.conf", Mode: 0o644, Size: 5})
	_, _ = tw.Write([]byte("port\n"))
	_ = tw.Close()

	tfs, err := overlay.NewTarFs(bytes.NewReader(layer.Bytes()), int64(layer.Len()))
	if err != nil {
		log.Fatal(err)
	}
	base := baseImage(map[string]string{"etc/motd": "hi\n", "etc/hosts": "127.0.0.1\n"})
	o, err := overlay.New(nil, []afero.Fs{tfs, base})
	if err != nil {
		log.Fatal(err)
	}
	names, _ := afero.ReadDir(o, "etc")
	for _, fi := range names {
		fmt.Println(fi.Name())
	}
	// Output:
	// app.conf
	// hosts
}

// Flatten squashes the layers into one tree.
func ExampleFlatten() {
	top := baseImage(map[string]string{"a": "top\n"})
	bottom := baseImage(map[string]string{"a": "bottom\n", "b": "bottom\n"})
	o, err := overlay.New(nil, []afero.Fs{top, bottom})
	if err != nil {
		log.Fatal(err)
	}
	flat := afero.NewMemMapFs()
	if err := overlay.Flatten(flat, o); err != nil {
		log.Fatal(err)
	}
	a, _ := afero.ReadFile(flat, "/a")
	b, _ := afero.ReadFile(flat, "/b")
	fmt.Printf("%q %q\n", a, b)
	// Output:
	// "top\n" "bottom\n"
}
