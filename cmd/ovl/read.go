package main

import (
	"archive/tar"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"path"
	"syscall"
	"time"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay"
)

var lsCommand = command{
	name:  "ls",
	args:  "--lower LAYER... [--upper DIR] [-l] [PATH]...",
	about: "List directories of the merged view (default /), or describe files.",
	setup: func(fs *flag.FlagSet) runner {
		var s stackFlags
		s.register(fs)
		long := fs.Bool("l", false, "long listing: mode, owner, size, mtime, symlink target")
		return func(e *env, args []string) error {
			st, err := s.openView()
			if err != nil {
				return err
			}
			defer st.close()
			if len(args) == 0 {
				args = []string{"/"}
			}
			for _, p := range args {
				if err := ls(e.stdout, st.o, p, *long, len(args) > 1); err != nil {
					return err
				}
			}
			return nil
		}
	},
}

// ls lists the directory p, or describes the file p. With heading set, a
// directory's listing starts with its name, as ls does for several names.
func ls(w io.Writer, o *overlay.Overlay, p string, long, heading bool) error {
	fi, err := o.Stat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return lsLine(w, o, path.Dir(p), fi, long)
	}
	list, err := afero.ReadDir(o, p)
	if err != nil {
		return err
	}
	if heading {
		fmt.Fprintf(w, "%s:\n", p)
	}
	for _, c := range list {
		if err := lsLine(w, o, p, c, long); err != nil {
			return err
		}
	}
	return nil
}

// lsLine prints one name of the directory dir.
func lsLine(w io.Writer, o *overlay.Overlay, dir string, fi fs.FileInfo, long bool) error {
	name := fi.Name()
	if fi.IsDir() {
		name += "/"
	}
	if !long {
		_, err := fmt.Fprintln(w, name)
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, err := o.ReadlinkIfPossible(path.Join(dir, fi.Name()))
		if err != nil {
			return err
		}
		name += " -> " + target
	}
	_, err := fmt.Fprintf(w, "%-11v %5s %8d %s %s\n", fi.Mode(), owner(fi), fi.Size(), fi.ModTime().UTC().Format("2006-01-02 15:04"), name)
	return err
}

// owner returns "uid:gid" as the layer reports it, or "-".
func owner(fi fs.FileInfo) string {
	switch sys := fi.Sys().(type) {
	case *tar.Header:
		return fmt.Sprintf("%d:%d", sys.Uid, sys.Gid)
	case *syscall.Stat_t:
		return fmt.Sprintf("%d:%d", sys.Uid, sys.Gid)
	}
	return "-"
}

var catCommand = command{
	name:  "cat",
	args:  "--lower LAYER... [--upper DIR] PATH...",
	about: "Print files of the merged view.",
	setup: func(fs *flag.FlagSet) runner {
		var s stackFlags
		s.register(fs)
		return func(e *env, args []string) error {
			return s.eachPath(args, func(o *overlay.Overlay, p string) error {
				return cat(e.stdout, o, p)
			})
		}
	},
}

// cat copies the file p to w.
func cat(w io.Writer, o *overlay.Overlay, p string) error {
	f, err := o.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

var treeCommand = command{
	name:  "tree",
	args:  "--lower LAYER... [--upper DIR] [PATH]",
	about: "Print the merged view as a tree (default /).",
	setup: func(fs *flag.FlagSet) runner {
		var s stackFlags
		s.register(fs)
		return func(e *env, args []string) error {
			if len(args) > 1 {
				return usageError("at most one PATH")
			}
			root := "/"
			if len(args) == 1 {
				root = args[0]
			}
			st, err := s.openView()
			if err != nil {
				return err
			}
			defer st.close()
			fmt.Fprintln(e.stdout, root)
			return tree(e.stdout, st.o, root, "")
		}
	},
}

// tree prints the directory dir's entries beneath the line prefix.
func tree(w io.Writer, o *overlay.Overlay, dir, prefix string) error {
	list, err := afero.ReadDir(o, dir)
	if err != nil {
		return err
	}
	for i, fi := range list {
		branch, indent := "├── ", "│   "
		if i == len(list)-1 {
			branch, indent = "└── ", "    "
		}
		p := path.Join(dir, fi.Name())
		label, err := treeLabel(o, p, fi)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s%s%s\n", prefix, branch, label)
		if fi.IsDir() {
			if err := tree(w, o, p, prefix+indent); err != nil {
				return err
			}
		}
	}
	return nil
}

// treeLabel returns how tree shows the name p.
func treeLabel(o *overlay.Overlay, p string, fi fs.FileInfo) (string, error) {
	switch {
	case fi.IsDir():
		return fi.Name() + "/", nil
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := o.ReadlinkIfPossible(p)
		return fi.Name() + " -> " + target, err
	}
	return fi.Name(), nil
}

var statCommand = command{
	name:  "stat",
	args:  "--lower LAYER... [--upper DIR] [-L] PATH...",
	about: "Describe files of the merged view.",
	setup: func(fs *flag.FlagSet) runner {
		var s stackFlags
		s.register(fs)
		follow := fs.Bool("L", false, "follow symlinks")
		return func(e *env, args []string) error {
			return s.eachPath(args, func(o *overlay.Overlay, p string) error {
				return stat(e.stdout, o, p, *follow)
			})
		}
	},
}

// stat describes the name p.
func stat(w io.Writer, o *overlay.Overlay, p string, follow bool) error {
	var fi fs.FileInfo
	var err error
	if follow {
		fi, err = o.Stat(p)
	} else {
		fi, _, err = o.LstatIfPossible(p)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "  File: %s\n", p)
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, err := o.ReadlinkIfPossible(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "  Link: %s\n", target)
	}
	fmt.Fprintf(w, "  Type: %s\n", typeName(fi.Mode()))
	fmt.Fprintf(w, "  Mode: %v (%04o)\n", fi.Mode(), octal(fi.Mode()))
	fmt.Fprintf(w, "  Size: %d\n", fi.Size())
	fmt.Fprintf(w, " Owner: %s\n", owner(fi))
	fmt.Fprintf(w, "Modify: %s\n", fi.ModTime().UTC().Format(time.RFC3339Nano))
	return nil
}

// octal returns the permission bits of m as chmod takes them.
func octal(m fs.FileMode) uint32 {
	bits := uint32(m.Perm())
	for _, b := range []struct {
		mode fs.FileMode
		bit  uint32
	}{{fs.ModeSetuid, 0o4000}, {fs.ModeSetgid, 0o2000}, {fs.ModeSticky, 0o1000}} {
		if m&b.mode != 0 {
			bits |= b.bit
		}
	}
	return bits
}

// typeName names the type of a file of mode m.
func typeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	}
	return "regular file"
}
