// Command sandbox runs an untrusted "plugin" in a sandboxed file system: the
// host directory sits read-only underneath, and every change the plugin
// makes lands in an in-memory scratch layer on top. Afterwards the scratch
// layer is the plugin's complete diff, in the OCI image-layer format: files
// it added or modified are plain files, and files it deleted are ".wh."
// whiteouts. The program walks that layer to report the changes, then checks
// that the host directory was not touched. A symlink in the host directory
// that points outside it shows that the plugin cannot reach beyond the
// sandbox's root either: symlinks resolve inside the merged view.
//
// It creates its own temporary host directory, so it needs no arguments:
//
//	go run ./examples/sandbox
package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay"
)

// hostFiles is the content of the host directory the plugin works on.
var hostFiles = map[string]string{
	"config.ini":     "[core]\nname = demo\n",
	"README.md":      "# demo\n",
	"notes/keep.txt": "keep me\n",
	"notes/old.txt":  "stale\n",
	"docs/intro.md":  "intro\n",
	"docs/usage.md":  "usage\n",
}

func main() {
	tmp, err := os.MkdirTemp("", "overlay-sandbox-")
	if err != nil {
		log.Fatal(err)
	}
	err = run(tmp)
	if rmErr := os.RemoveAll(tmp); err == nil {
		err = rmErr
	}
	if err != nil {
		log.Fatal(err)
	}
}

// run builds the host directory tmp/host, with a secret beside it in tmp,
// and runs the plugin in a sandbox over it.
func run(tmp string) error {
	dir := filepath.Join(tmp, "host")
	if err := writeHost(dir); err != nil {
		return err
	}
	// A secret outside the host directory, and a host symlink pointing at it.
	if err := os.WriteFile(filepath.Join(tmp, "secret.txt"), []byte("s3cr3t\n"), 0o600); err != nil {
		return err
	}
	if err := os.Symlink("../secret.txt", filepath.Join(dir, "secret-link")); err != nil {
		return err
	}
	before, err := hostSnapshot(dir)
	if err != nil {
		return err
	}

	// The host directory, read-only, under an in-memory scratch layer.
	host := afero.NewReadOnlyFs(afero.NewBasePathFs(afero.NewOsFs(), dir))
	scratch := afero.NewMemMapFs()
	sandbox, err := overlay.New(scratch, []afero.Fs{host})
	if err != nil {
		return err
	}

	fmt.Println("plugin run:")
	if err := plugin(sandbox); err != nil {
		return fmt.Errorf("plugin: %w", err)
	}

	fmt.Println("\nwhat the plugin sees now:")
	if err := printTree(sandbox); err != nil {
		return err
	}

	fmt.Println("\nchanges, read from the scratch layer:")
	if err := report(scratch, host); err != nil {
		return err
	}

	after, err := hostSnapshot(dir)
	if err != nil {
		return err
	}
	fmt.Println("\nhost directory untouched:", maps.Equal(before, after))
	if !maps.Equal(before, after) {
		return errors.New("the host directory changed")
	}
	return nil
}

// plugin stands for untrusted code: it edits, creates, deletes and renames
// files through the file system it is given, and tries to escape it. Each
// step prints its result; a step that does not end as expected (nil, or an
// error matching want) is an error.
func plugin(fsys afero.Fs) error {
	steps := []struct {
		what string
		do   func() error
		want error
	}{
		{"append to config.ini", func() error { return appendTo(fsys, "config.ini", "plugin = on\n") }, nil},
		{"create plugin/state.json", func() error {
			if err := fsys.MkdirAll("plugin", 0o755); err != nil {
				return err
			}
			return afero.WriteFile(fsys, "plugin/state.json", []byte("{}\n"), 0o644)
		}, nil},
		{"delete notes/old.txt", func() error { return fsys.Remove("notes/old.txt") }, nil},
		{"rename README.md to README.txt", func() error { return fsys.Rename("README.md", "README.txt") }, nil},
		{"rename docs/ to manual/", func() error { return fsys.Rename("docs", "manual") }, nil},

		// Neither symlinks nor names climb out of the sandbox: the host
		// link to "../secret.txt" finds nothing, and "../x" is "/x" inside.
		{"read secret-link (-> ../secret.txt)", func() error {
			_, err := afero.ReadFile(fsys, "secret-link")
			return err
		}, fs.ErrNotExist},
		{"write ../escape.txt (lands inside)", func() error {
			return afero.WriteFile(fsys, "../escape.txt", []byte("no\n"), 0o644)
		}, nil},

		// Whiteout names are reserved, so a plugin cannot forge a deletion.
		{"create .wh.config.ini (reserved)", func() error {
			return afero.WriteFile(fsys, ".wh.config.ini", nil, 0o644)
		}, syscall.EINVAL},
	}
	for _, st := range steps {
		err := st.do()
		fmt.Printf("  %-38s %s\n", st.what, errText(err))
		if !errors.Is(err, st.want) { // errors.Is(err, nil) means err == nil

			return fmt.Errorf("%s: got %v, want %v", st.what, err, st.want)
		}
	}
	return nil
}

// appendTo appends data to the existing file name.
func appendTo(fsys afero.Fs, name, data string) error {
	f, err := fsys.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close() // best effort: the write error is the one to report
		return err
	}
	return f.Close()
}

// report walks the scratch layer and prints the plugin's changes sorted by
// path: files not in the host are added, files also in the host are
// modified, and ".wh.NAME" whiteouts are deletions. Directories are copied
// up as needed, so only new ones are reported. The overlay's own ".wh..wh."
// names (its work directory and opaque markers) are skipped.
func report(scratch, host afero.Fs) error {
	changes := map[string]string{} // path → what happened to it
	err := afero.Walk(scratch, "/", func(p string, info fs.FileInfo, err error) error {
		if err != nil || p == "/" {
			return err
		}
		base := path.Base(p)
		_, hostErr := host.Stat(p)
		switch {
		case strings.HasPrefix(base, ".wh..wh."):
			if info.IsDir() {
				return filepath.SkipDir
			}
		case strings.HasPrefix(base, ".wh."):
			gone := path.Join(path.Dir(p), strings.TrimPrefix(base, ".wh."))
			if fi, err := host.Stat(gone); err == nil && fi.IsDir() {
				gone += "/"
			}
			changes[gone] = "deleted"
		case info.IsDir():
			if errors.Is(hostErr, fs.ErrNotExist) {
				changes[p+"/"] = "added"
			}
		case hostErr == nil:
			changes[p] = "modified"
		default:
			changes[p] = "added"
		}
		return nil
	})
	for _, p := range slices.Sorted(maps.Keys(changes)) {
		fmt.Printf("  %-9s %s\n", changes[p], p)
	}
	return err
}

// printTree prints every file of fsys with its content, and every symlink
// with its target.
func printTree(fsys afero.Fs) error {
	return afero.Walk(fsys, "/", func(p string, info fs.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		if info.Mode()&fs.ModeSymlink != 0 {
			target, err := fsys.(afero.LinkReader).ReadlinkIfPossible(p)
			fmt.Printf("  %-20s -> %s\n", p, target)
			return err
		}
		b, err := afero.ReadFile(fsys, p)
		fmt.Printf("  %-20s %q\n", p, b)
		return err
	})
}

// writeHost fills the host directory dir with hostFiles.
func writeHost(dir string) error {
	for _, name := range slices.Sorted(maps.Keys(hostFiles)) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(hostFiles[name]), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// hostSnapshot returns every entry under dir as relative path → content,
// directories as path + "/" → "" and symlinks as path → "-> target", read
// directly from the operating system.
func hostSnapshot(dir string) (map[string]string, error) {
	tree := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			tree[rel+"/"] = ""
			return nil
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			tree[rel] = "-> " + target
			return err
		}
		b, err := os.ReadFile(p)
		tree[rel] = string(b)
		return err
	})
	return tree, err
}

// errText is err's text, or "ok" for nil.
func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}
