package overlaytest

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/spf13/afero"
)

// Node is one name of a [Tree]: its type and permission bits, and what it
// holds.
type Node struct {
	Mode   fs.FileMode // the type and permission bits, as Lstat reports them
	Data   string      // a regular file's content
	Target string      // a symlink's target
}

// String describes the node briefly: type, mode and a digest of its content.
func (n Node) String() string {
	switch {
	case n.Mode&fs.ModeSymlink != 0:
		return fmt.Sprintf("symlink -> %q", n.Target)
	case n.Mode.IsDir():
		return fmt.Sprintf("dir %v", n.Mode)
	}
	return fmt.Sprintf("file %v %s", n.Mode, digest(n.Data))
}

// digest shows data briefly: the data itself if short, else its start,
// length and checksum.
func digest(data string) string {
	if len(data) <= 24 {
		return fmt.Sprintf("%q", data)
	}
	return fmt.Sprintf("%q…(%d bytes, crc %08x)", data[:16], len(data), crc32.ChecksumIEEE([]byte(data)))
}

// Tree is a whole directory tree: every name under the root, "." for the
// root itself and "a/b" below it, with its node.
type Tree map[string]Node

// String lists the tree, one name per line in name order.
func (t Tree) String() string {
	var b strings.Builder
	for _, name := range t.names() {
		fmt.Fprintf(&b, "%s: %v\n", name, t[name])
	}
	return b.String()
}

// names returns the tree's names, sorted.
func (t Tree) names() []string {
	names := make([]string, 0, len(t))
	for name := range t {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Snapshot walks the directory root of fsys and records every name beneath
// it, without following symlinks where fsys implements afero.Lstater and
// afero.LinkReader. Root is a name fsys accepts: "." for an overlay or an
// io/fs based layer, "/" for afero.MemMapFs. Snapshot fails if a call
// fails, and if a directory listing names one entry twice.
func Snapshot(fsys afero.Fs, root string) (Tree, error) {
	t := make(Tree)
	return t, t.add(fsys, root, ".")
}

// add records the name p of fsys under the tree name rel, and its
// children if it is a directory.
func (t Tree) add(fsys afero.Fs, p, rel string) error {
	info, err := lstat(fsys, p)
	if err != nil {
		return err
	}
	n := Node{Mode: info.Mode()}
	switch {
	case n.Mode&fs.ModeSymlink != 0:
		r, ok := fsys.(afero.LinkReader)
		if !ok {
			return fmt.Errorf("%s: a symlink, but %s cannot read symlinks", p, fsys.Name())
		}
		n.Target, err = r.ReadlinkIfPossible(p)
	case n.Mode.IsRegular():
		var data []byte
		data, err = afero.ReadFile(fsys, p)
		n.Data = string(data)
	case n.Mode.IsDir():
		err = t.addChildren(fsys, p, rel)
	}
	if err != nil {
		return err
	}
	t[rel] = n
	return nil
}

// addChildren records the children of the directory p.
func (t Tree) addChildren(fsys afero.Fs, p, rel string) error {
	f, err := fsys.Open(p)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	slices.Sort(names)
	if i := dupAt(names); i >= 0 {
		return fmt.Errorf("%s: listing names %q twice", p, names[i])
	}
	var errs []error
	for _, name := range names {
		errs = append(errs, t.add(fsys, path.Join(p, name), path.Join(rel, name)))
	}
	return errors.Join(errs...)
}

// dupAt returns the index of a name that the sorted names hold twice, or -1.
func dupAt(names []string) int {
	for i := 1; i < len(names); i++ {
		if names[i] == names[i-1] {
			return i
		}
	}
	return -1
}

// lstat describes p without following a final symlink where fsys can.
func lstat(fsys afero.Fs, p string) (fs.FileInfo, error) {
	if ls, ok := fsys.(afero.Lstater); ok {
		fi, _, err := ls.LstatIfPossible(p)
		return fi, err
	}
	return fsys.Stat(p)
}

// Diff returns the differences between two trees, one line per name that
// differs, in name order; "" if they are equal.
func Diff(want, got Tree) string {
	all := make(Tree, len(want)+len(got))
	for name, n := range want {
		all[name] = n
	}
	for name, n := range got {
		all[name] = n
	}
	var b strings.Builder
	for _, name := range all.names() {
		w, inWant := want[name]
		g, inGot := got[name]
		switch {
		case !inGot:
			fmt.Fprintf(&b, "%s: missing, want %v\n", name, w)
		case !inWant:
			fmt.Fprintf(&b, "%s: unexpected %v\n", name, g)
		case w != g:
			fmt.Fprintf(&b, "%s: got %v, want %v\n", name, g, w)
		}
	}
	return b.String()
}
