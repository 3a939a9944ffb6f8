package overlay

import (
	"errors"
	"io/fs"
	"strings"
	"sync"
	"sync/atomic"
)

// upperIndex remembers the names in the OCI upper's directories, so that a
// lookup need not ask the upper whether it holds a name, a whiteout for it,
// or an opaque marker: it reads the directory's listing once and from then
// on keeps that listing current itself.
//
// It can, because every change of a name in the upper goes through the
// layer's own methods (mkdir, create, symlink, remove, removeAll, rename),
// which report the change here; the upper must not be changed underneath a
// live overlay (the kernel says the same of its upperdir). A change that
// fails, and so may or may not have happened, makes the index forget the
// directories concerned, which are then read again. Names in the work
// directory are never looked up and never remembered.
//
// A read takes only its directory's read lock. Changes, and storing a
// listing just read, are serialised by mu, and a listing read while a
// change happened is not stored: it may predate the change. Memory: one map entry (about 40 bytes)
// per name in each upper directory that a lookup has passed through.
type upperIndex struct {
	mu   sync.Mutex
	gen  atomic.Uint64 // counts changes; changed under mu
	dirs sync.Map      // upper directory name → *dirNames
}

// dirNames is what one upper directory holds, as lookups need it.
type dirNames struct {
	opaque atomic.Bool
	mu     sync.RWMutex        // guards names
	names  map[string]nameKind // a plain map: a name costs no allocation
}

// nameKind says what a directory holds at one name. The first three bits
// are exclusive: the type of what is there, if anything.
type nameKind uint8

const (
	kindFile      nameKind = 1 << iota // neither directory nor symlink
	kindDir                            // a directory
	kindSymlink                        // a symbolic link
	kindWhiteout                       // a ".wh." marker for the name is there
	kindTypeMask  = kindFile | kindDir | kindSymlink
	kindUnchanged = nameKind(0) // for created: keep what is known
)

// kindOf returns the type bits of a FileInfo.
func kindOf(fi fs.FileInfo) nameKind {
	switch {
	case fi.IsDir():
		return kindDir
	case fi.Mode()&fs.ModeSymlink != 0:
		return kindSymlink
	}
	return kindFile
}

// present reports whether anything is at the name.
func (k nameKind) present() bool { return k&kindTypeMask != 0 }

// lookup returns what the directory holds at name.
func (d *dirNames) lookup(name string) nameKind {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.names[name]
}

// set records that the directory holds a name of the given type (a marker
// sets the whiteout bit of the name it hides, or the opaque flag), or with
// kind 0, that it no longer holds it. The caller holds the index's mu or
// owns d alone.
func (d *dirNames) set(name string, kind nameKind) {
	switch {
	case name == opaqueMarker:
		d.opaque.Store(kind != 0)
		return
	case isReserved(name) && !strings.HasPrefix(name, internalPrefix):
		name = name[len(whiteoutPrefix):]
		kind = kind.marker()
		d.update(name, kindTypeMask, kind)
		return
	}
	d.update(name, kindWhiteout, kind)
}

// marker turns the type of a marker file into the whiteout bit.
func (k nameKind) marker() nameKind {
	if k != 0 {
		return kindWhiteout
	}
	return 0
}

// update sets name's kind to the bits of kind, keeping the bits in keep.
func (d *dirNames) update(name string, keep, kind nameKind) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := d.names[name]&keep | kind
	switch {
	case k == 0:
		delete(d.names, name)
	case d.names == nil:
		d.names = map[string]nameKind{name: k}
	default:
		d.names[name] = k
	}
}

// listing returns the names of the upper directory dir, reading them from
// l if they are not remembered yet.
func (x *upperIndex) listing(l layer, dir string) (*dirNames, error) {
	if v, ok := x.dirs.Load(dir); ok {
		return v.(*dirNames), nil
	}
	gen := x.gen.Load()
	list, err := l.readDirQuietly(dir)
	if err != nil {
		return nil, err
	}
	d := &dirNames{names: make(map[string]nameKind, len(list))}
	for _, fi := range list {
		d.set(fi.Name(), kindOf(fi))
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.gen.Load() != gen || (dir != "." && x.loaded(parentOf(dir)) == nil) {
		return d, nil // good for this lookup; not kept, see forgetTree
	}
	v, _ := x.dirs.LoadOrStore(dir, d)
	return v.(*dirNames), nil
}

// The calls below report changes of names in the upper. name is in the
// overlay's form ("a/b").

// created reports that name now exists with the given type, or with
// kindUnchanged, that it exists with the type already known (an open with
// O_CREATE of what may have been there). A new directory is empty.
func (x *upperIndex) created(name string, kind nameKind) {
	if x == nil || inWorkDir(name) {
		return
	}
	x.change(func() {
		if d := x.loaded(parentOf(name)); d != nil {
			base := baseOf(name)
			if kind == kindUnchanged {
				if !isReserved(base) && d.lookup(base).present() {
					return
				}
				kind = kindFile
			}
			d.set(base, kind)
			if kind == kindDir {
				x.dirs.Store(name, new(dirNames))
			}
		}
	})
}

// removed reports that name, and everything under it, is gone.
func (x *upperIndex) removed(name string) {
	if x == nil || inWorkDir(name) {
		return
	}
	x.change(func() {
		if d := x.loaded(parentOf(name)); d != nil {
			d.set(baseOf(name), 0)
		}
		x.forgetTree(name)
	})
}

// renamed reports that from is now at to, with the given type (0 if not
// known, when to's directory is read again).
func (x *upperIndex) renamed(from, to string, kind nameKind) {
	if x == nil {
		return
	}
	x.change(func() {
		if !inWorkDir(from) {
			if d := x.loaded(parentOf(from)); d != nil {
				d.set(baseOf(from), 0)
			}
			x.forgetTree(from)
		}
		if inWorkDir(to) {
			return
		}
		x.forgetTree(to)
		if d := x.loaded(parentOf(to)); d != nil {
			if kind == 0 {
				x.forgetTree(parentOf(to))
				return
			}
			d.set(baseOf(to), kind)
		}
	})
}

// unsure reports a change of name that failed part-way, or may have: the
// directory holding it, and everything under it, are read again.
func (x *upperIndex) unsure(name string) {
	if x == nil || inWorkDir(name) {
		return
	}
	x.change(func() { x.forgetTree(parentOf(name)) })
}

// made reports the outcome of creating name with the given type: a name
// already there changed nothing, any other failure may have changed
// something.
func (x *upperIndex) made(name string, kind nameKind, err error) {
	switch {
	case err == nil:
		x.created(name, kind)
	case !errors.Is(err, fs.ErrExist):
		x.unsure(name)
	}
}

// gone reports the outcome of removing name: a name found absent is gone
// too, any other failure may have removed part of it.
func (x *upperIndex) gone(name string, err error) {
	if err == nil || isNotExist(err) {
		x.removed(name)
	} else {
		x.unsure(name)
	}
}

// kindIn returns what the index knows of name's type from its directory's
// listing, 0 if it knows nothing.
func (x *upperIndex) kindIn(name string) nameKind {
	if x == nil {
		return 0
	}
	if d := x.loaded(parentOf(name)); d != nil {
		return d.lookup(baseOf(name)) & kindTypeMask
	}
	return 0
}

// reset forgets everything, for an upper emptied or replaced.
func (x *upperIndex) reset() {
	if x == nil {
		return
	}
	x.change(func() { x.dirs.Clear() })
}

// change applies a change under mu, counting it so that a listing read
// meanwhile is not stored.
func (x *upperIndex) change(apply func()) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen.Add(1)
	apply()
}

// generation counts the changes of names reported so far.
func (x *upperIndex) generation() uint64 {
	if x == nil {
		return 0
	}
	return x.gen.Load()
}

// loaded returns the remembered names of dir, nil if there are none.
func (x *upperIndex) loaded(dir string) *dirNames {
	if v, ok := x.dirs.Load(dir); ok {
		return v.(*dirNames)
	}
	return nil
}

// forgetTree forgets the listings of the directory name and of every
// directory under it. A listing is only kept while its parent's is, so
// when name has none, nothing under it has one either: forgetting a file
// costs one map lookup. The caller holds mu.
func (x *upperIndex) forgetTree(name string) {
	if name == "." {
		x.dirs.Clear()
		return
	}
	if _, ok := x.dirs.LoadAndDelete(name); !ok {
		return
	}
	prefix := name + "/"
	x.dirs.Range(func(k, _ any) bool {
		if strings.HasPrefix(k.(string), prefix) {
			x.dirs.Delete(k)
		}
		return true
	})
}

// inWorkDir reports whether name is the work directory or inside it.
func inWorkDir(name string) bool {
	return strings.HasPrefix(name, workDir) && (len(name) == len(workDir) || name[len(workDir)] == '/')
}
