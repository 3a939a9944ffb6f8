package overlay

import (
	"io"
	"io/fs"
	"syscall"
)

// dirHandle is the state of an open merged directory. Its listing is read
// on first use and kept until rewound, as the kernel's readdir cache is.
// Its node, in the overlay's handle set, names the directory: it follows
// renames, and a listing of a removed directory fails with ENOENT, as
// getdents on a removed directory does.
type dirHandle struct {
	node   node
	info   fs.FileInfo // the topmost copy when opened
	list   []fs.FileInfo
	loaded bool
}

// next returns up to n entries (all if n <= 0) from the current position.
func (d *dirHandle) next(o *Overlay, n int) ([]fs.FileInfo, error) {
	if !d.loaded {
		dir, ok := o.handles.name(&d.node)
		if !ok {
			return nil, syscall.ENOENT
		}
		list, err := o.listDir(dir)
		if err != nil {
			return nil, err
		}
		d.list, d.loaded = list, true
	}
	if n <= 0 {
		rest := d.list
		d.list = nil
		if rest == nil {
			rest = []fs.FileInfo{}
		}
		return rest, d.end(o, nil)
	}
	if len(d.list) == 0 {
		return nil, d.end(o, io.EOF)
	}
	n = min(n, len(d.list))
	page := d.list[:n:n]
	d.list = d.list[n:]
	return page, nil
}

// end is what reaching the end of the listing reports: atEnd, or ENOENT if
// the directory was removed since it was opened, as getdents reports when
// asked for more of a removed directory.
func (d *dirHandle) end(o *Overlay, atEnd error) error {
	if _, ok := o.handles.name(&d.node); !ok {
		return syscall.ENOENT
	}
	return atEnd
}

// rewind makes the next read list the directory afresh.
func (d *dirHandle) rewind() {
	d.list, d.loaded = nil, false
}

// stat returns the topmost copy of the directory as it is now, or, if it
// has gone since, as it was when it went, as an open directory's inode
// keeps its attributes.
func (d *dirHandle) stat(o *Overlay) fs.FileInfo {
	dir, ok := o.handles.name(&d.node)
	if !ok {
		if last := o.handles.lastInfo(&d.node); last != nil {
			return namedInfo{last, d.info.Name()}
		}
		return d.info
	}
	o.mu.RLock()
	r, err := o.walk(dir, false)
	o.mu.RUnlock()
	if err != nil || !r.found {
		return d.info
	}
	return namedInfo{r.info, d.info.Name()}
}

// keepDirHandles records, for the directory handles on name and under it,
// what their directories are before a removal takes them away. The caller
// holds o.mu for writing.
func (o *Overlay) keepDirHandles(name string) {
	o.handles.dirsUnder(name, func(p string) fs.FileInfo {
		r, err := o.walk(p, false)
		if err != nil || !r.found {
			return nil
		}
		return r.info
	})
}

// listDir lists the merged directory that the resolved name dir is now; a
// directory removed since it was opened lists as empty.
func (o *Overlay) listDir(dir string) ([]fs.FileInfo, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	r, err := o.walk(dir, false)
	if err != nil || !r.found || !r.isDir() {
		return nil, nil
	}
	return o.listing(r.entry)
}
