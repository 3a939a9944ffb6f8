package overlay

import (
	"io/fs"
	"strings"
	"syscall"
)

// lowerLookup is the state of one lookup through the lower layers, as the
// kernel keeps it (struct ovl_lookup_data).
type lowerLookup struct {
	// name is what the next layer is asked for: a base name, looked up in
	// the parent's copy in that layer, or, once an absolute redirect was
	// met, a name such as "/a/b", walked from that layer's root.
	name  string
	stop  bool // whether no layer further down is asked
	isDir bool // whether a directory was found: a non-directory below it ends the lookup

	// bottom is set while the layer being asked is the last one that
	// could contribute: its opaque and redirect xattrs are not read, as
	// the kernel does not read them there.
	bottom bool
}

// absolute reports whether the lookup follows an absolute redirect.
func (st *lowerLookup) absolute() bool {
	return strings.HasPrefix(st.name, "/")
}

// child looks base up in the merged lower directory parent, as the kernel
// looks a name up through the lower layers (ovl_lookup): layer by layer
// down parent's copies, each at its own name in its layer. The topmost copy
// wins; a non-directory ends the search, and so do a whiteout, an opaque
// directory and a non-directory below a directory. A directory with a
// redirect xattr sends the search in the layers below it to the redirect's
// target: a relative one names a sibling, looked up in parent's copies; an
// absolute one names a directory from the root, walked in each lower below
// whose root merges. It serves the lower index, where it runs once per name.
func (o *Overlay) child(parent lowerEntry, base string) (lowerEntry, error) {
	p := join(parent.path, base)
	st := lowerLookup{name: base}
	stack, fromRoot := parent, parent.path == "."
	var top lowerEntry
	for k := 0; k < len(stack.dirs) && !st.stop; k++ {
		i := stack.dirs[k]
		st.bottom = i == len(o.layers)-1 || o.cfg.userXattr && k == len(stack.dirs)-1
		q, info, found, err := o.lookupIn(i, stack.pathIn(k), &st)
		if err != nil {
			return lowerEntry{}, err
		}
		if !found {
			continue
		}
		if !top.found {
			top = lowerEntry{found: true, entry: entry{path: p, layer: i, info: info}}
			if q != p {
				top.lsrc = q
			}
		}
		if info.IsDir() {
			top.addCopy(i, q)
		}
		if st.absolute() && !fromRoot {
			// The kernel goes on in the root's stack, below this layer.
			stack, fromRoot = o.lowerRootStack(), true
			k = layersAbove(stack.dirs, i) - 1
		}
	}
	return top, nil
}

// layersAbove returns how many of the layers dirs (top-down) are above
// layer i or are i itself.
func layersAbove(dirs []int, i int) int {
	n := 0
	for n < len(dirs) && dirs[n] <= i {
		n++
	}
	return n
}

// lowerRootStack returns the lowers' root, whose stack an absolute
// redirect is followed in.
func (o *Overlay) lowerRootStack() lowerEntry {
	root, err := o.lowerOnly(".")
	if err != nil {
		return lowerEntry{}
	}
	return root
}

// lookupIn asks the lower layer i for the lookup's name, relative to dir
// (the parent's copy in that layer) or, after an absolute redirect, walked
// from the layer's root one component at a time, as the kernel's
// ovl_lookup_layer does: a redirect met on the way rewrites the name the
// layers below are asked for, while this layer's walk goes on below the
// directory it found. It returns the copy's name in the layer.
func (o *Overlay) lookupIn(i int, dir string, st *lowerLookup) (string, fs.FileInfo, bool, error) {
	if !st.absolute() {
		if isDotName(st.name) {
			return "", nil, false, syscall.EACCES
		}
		q := join(dir, st.name)
		info, found, err := o.lookupStep(i, q, 0, "", st)
		return q, info, found, err
	}
	q, rest := ".", st.name[1:]
	for {
		c, after, more := strings.Cut(rest, "/")
		if isDotName(c) {
			return "", nil, false, syscall.EACCES
		}
		post := ""
		if more {
			post = rest[len(c):]
		}
		q = join(q, c)
		info, found, err := o.lookupStep(i, q, len(st.name)-len(rest), post, st)
		if err != nil || !found || !more {
			return q, info, found, err
		}
		rest = after
	}
}

// lookupStep asks the lower layer i for q, one component of a lookup
// (ovl_lookup_single): the name being looked up is st.name[:prelen], this
// component, then post, which is empty at the last component. It reports
// whether q counts as found and updates st: a whiteout, an opaque
// directory and a non-directory stop the lookup, a non-directory in the
// middle of a walk or below a directory found higher up is not found, and a
// directory's redirect rewrites st.name.
func (o *Overlay) lookupStep(i int, q string, prelen int, post string, st *lowerLookup) (fs.FileInfo, bool, error) {
	l := o.layers[i]
	last := post == ""
	info, err := l.lstat(q)
	switch {
	case err != nil && !isNotExist(err):
		return nil, false, err
	case err != nil:
		wh, err := l.hasWhiteout(q)
		st.stop = st.stop || wh
		return nil, false, err
	case l.kernel && isWhiteoutInfo(info):
		st.stop = true
		return nil, false, nil
	case !info.IsDir():
		found := last && !st.isDir
		st.stop = true
		return info, found, nil
	}
	st.isDir = st.isDir || last
	if st.bottom {
		return info, true, nil
	}
	if opaque, err := l.isOpaque(q); err != nil || opaque {
		st.stop = st.stop || opaque
		return info, err == nil, err
	}
	return info, true, o.followLowerRedirect(l, q, prelen, post, st)
}

// followLowerRedirect rewrites the lookup's name if the directory q of the
// lower l has a redirect xattr (ovl_check_redirect): an absolute target
// replaces the name up to q and resumes a lookup that an opaque directory
// above stopped; a relative one replaces q's own component.
func (o *Overlay) followLowerRedirect(l layer, q string, prelen int, post string, st *lowerLookup) error {
	target, abs, ok, err := o.lowerRedirect(l, q)
	switch {
	case err != nil || !ok:
		return err
	case abs:
		st.name, st.stop = "/"+target+post, false
	default:
		st.name = st.name[:prelen] + target + post
	}
	return nil
}

// pathIn returns the name of e's k-th copy (that in layer e.dirs[k]) in
// its layer.
func (e lowerEntry) pathIn(k int) string {
	if e.paths == nil {
		return e.path
	}
	return e.paths[k]
}

// addCopy appends the directory copy q of layer i to e's stack. The names
// are kept only once one differs from e.path, so that the common case,
// where every layer holds the directory at its merged name, allocates
// nothing for them.
func (e *lowerEntry) addCopy(i int, q string) {
	if e.paths == nil && q != e.path {
		e.paths = make([]string, len(e.dirs), len(e.dirs)+1)
		for k := range e.paths {
			e.paths[k] = e.path
		}
	}
	e.dirs = append(e.dirs, i)
	if e.paths != nil {
		e.paths = append(e.paths, q)
	}
}
