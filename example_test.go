package overlay_test

import (
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"strings"
	"syscall"
	"testing/fstest"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay"
)

// mapLayer returns a read-only lower layer holding files, name → content.
// Writing to it fails, so an example that wrote to a lower by mistake would
// show the error.
func mapLayer(files map[string]string) afero.Fs {
	m := fstest.MapFS{}
	for name, data := range files {
		m[name] = &fstest.MapFile{Data: []byte(data), Mode: 0o644}
	}
	return afero.FromIOFS{FS: m}
}

// names returns the names in the merged directory dir, in listing order.
func names(fsys afero.Fs, dir string) []string {
	infos, err := afero.ReadDir(fsys, dir)
	if err != nil {
		log.Fatal(err)
	}
	var out []string
	for _, fi := range infos {
		n := fi.Name()
		if fi.IsDir() {
			n += "/"
		}
		out = append(out, n)
	}
	return out
}

// read returns the content of the file name, or the error text.
func read(fsys afero.Fs, name string) string {
	b, err := afero.ReadFile(fsys, name)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// Stack a writable in-memory layer over a read-only base: reads fall through
// to the base, writes land in the upper, and listings merge both.
func Example() {
	base := mapLayer(map[string]string{
		"etc/hosts":    "127.0.0.1 localhost\n",
		"etc/hostname": "base\n",
	})
	o, err := overlay.New(afero.NewMemMapFs(), []afero.Fs{base})
	if err != nil {
		log.Fatal(err)
	}

	if err := afero.WriteFile(o, "etc/motd", []byte("hello\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Print(read(o, "etc/hosts"))
	fmt.Print(read(o, "etc/motd"))
	fmt.Println(names(o, "etc"))
	// Output:
	// 127.0.0.1 localhost
	// hello
	// [hostname hosts motd]
}

// lowers[0] is the topmost lower layer: where two lowers hold the same name,
// the first one wins. Directories of the same name merge.
func ExampleNew() {
	top := mapLayer(map[string]string{"conf/app.yaml": "from top\n"})
	bottom := mapLayer(map[string]string{
		"conf/app.yaml": "from bottom\n",
		"conf/db.yaml":  "only in bottom\n",
	})
	o, err := overlay.New(afero.NewMemMapFs(), []afero.Fs{top, bottom})
	if err != nil {
		log.Fatal(err)
	}

	fmt.Print(read(o, "conf/app.yaml"))
	fmt.Print(read(o, "conf/db.yaml"))
	fmt.Println(names(o, "conf"))
	// Output:
	// from top
	// only in bottom
	// [app.yaml db.yaml]
}

// Removing a file that a lower layer holds leaves the lower alone and records
// the deletion as a whiteout, an empty ".wh.NAME" file, in the upper.
func ExampleOverlay_Remove() {
	upper := afero.NewMemMapFs()
	lower := mapLayer(map[string]string{"hosts": "127.0.0.1 localhost\n"})
	o, err := overlay.New(upper, []afero.Fs{lower})
	if err != nil {
		log.Fatal(err)
	}

	fmt.Println(o.Remove("hosts"))
	_, err = o.Stat("hosts")
	fmt.Println(errors.Is(err, fs.ErrNotExist))
	fmt.Println(names(o, "/"))

	// The upper, seen directly: the whiteout beside the hidden work dir.
	fmt.Println(names(upper, "/"))
	// Output:
	// <nil>
	// true
	// []
	// [.wh..wh.work/ .wh.hosts]
}

// A directory that exists only in a lower layer can be renamed: the old name
// vanishes and the new one shows the whole content.
func ExampleOverlay_Rename() {
	lower := mapLayer(map[string]string{
		"src/main.go":      "package main\n",
		"src/util/util.go": "package util\n",
	})
	o, err := overlay.New(afero.NewMemMapFs(), []afero.Fs{lower})
	if err != nil {
		log.Fatal(err)
	}

	fmt.Println(o.Rename("src", "cmd"))
	_, err = o.Stat("src")
	fmt.Println(errors.Is(err, fs.ErrNotExist))
	fmt.Println(names(o, "/"))
	fmt.Println(names(o, "cmd"), names(o, "cmd/util"))
	fmt.Print(read(o, "cmd/util/util.go"))
	// Output:
	// <nil>
	// true
	// [cmd/]
	// [main.go util/] [util.go]
	// package util
}

// A directory created where a lower one was removed is opaque: the old
// lower children stay hidden, and only what is created anew shows.
func ExampleOverlay_Mkdir() {
	lower := mapLayer(map[string]string{
		"cache/a": "old",
		"cache/b": "old",
	})
	o, err := overlay.New(afero.NewMemMapFs(), []afero.Fs{lower})
	if err != nil {
		log.Fatal(err)
	}

	fmt.Println(o.RemoveAll("cache"))
	fmt.Println(o.Mkdir("cache", 0o755))
	fmt.Println(names(o, "cache"))
	if err := afero.WriteFile(o, "cache/c", []byte("new"), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Println(names(o, "cache"))
	_, err = o.Stat("cache/a")
	fmt.Println(errors.Is(err, fs.ErrNotExist))
	// Output:
	// <nil>
	// <nil>
	// []
	// [c]
	// true
}

// Opening a lower file for writing copies it up into the upper first; the
// write changes the copy, and the lower keeps its content.
func Example_copyUp() {
	upper := afero.NewMemMapFs()
	lower := mapLayer(map[string]string{"etc/motd": "welcome\n"})
	o, err := overlay.New(upper, []afero.Fs{lower})
	if err != nil {
		log.Fatal(err)
	}

	f, err := o.OpenFile("etc/motd", os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := f.WriteString("have fun\n"); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}

	// The overlay keeps MemMapFs names rooted, so the upper is read as "/etc/motd".
	fmt.Printf("overlay: %q\n", read(o, "etc/motd"))
	fmt.Printf("upper:   %q\n", read(upper, "/etc/motd"))
	fmt.Printf("lower:   %q\n", read(lower, "etc/motd"))
	// Output:
	// overlay: "welcome\nhave fun\n"
	// upper:   "welcome\nhave fun\n"
	// lower:   "welcome\n"
}

// With a nil upper the overlay is read-only: reads work, and every write
// fails with EROFS, as on a read-only mount.
func Example_readOnly() {
	lower := mapLayer(map[string]string{"README": "read me\n"})
	o, err := overlay.New(nil, []afero.Fs{lower})
	if err != nil {
		log.Fatal(err)
	}

	fmt.Print(read(o, "README"))
	err = afero.WriteFile(o, "README", []byte("changed\n"), 0o644)
	fmt.Println(err)
	fmt.Println(errors.Is(err, syscall.EROFS))
	fmt.Println(errors.Is(o.Remove("README"), syscall.EROFS))
	// Output:
	// read me
	// open README: read-only file system
	// true
	// true
}

// Test fixtures: build one base layer, then give every test its own fresh
// upper. The tests share the base but never see each other's writes.
func Example_fixtures() {
	base := mapLayer(map[string]string{"data/users.csv": "id,name\n1,ann\n"})
	newFixture := func() afero.Fs {
		o, err := overlay.New(afero.NewMemMapFs(), []afero.Fs{base})
		if err != nil {
			log.Fatal(err)
		}
		return o
	}

	t1, t2 := newFixture(), newFixture()
	if err := afero.WriteFile(t1, "data/users.csv", []byte("id,name\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	if err := t2.Remove("data/users.csv"); err != nil {
		log.Fatal(err)
	}

	fmt.Printf("t1:   %q\n", read(t1, "data/users.csv"))
	_, err := t2.Stat("data/users.csv")
	fmt.Printf("t2:   removed=%v\n", errors.Is(err, fs.ErrNotExist))
	fmt.Printf("base: %q\n", read(base, "data/users.csv"))
	fmt.Println(strings.Join(names(newFixture(), "data"), " "))
	// Output:
	// t1:   "id,name\n"
	// t2:   removed=true
	// base: "id,name\n1,ann\n"
	// users.csv
}
