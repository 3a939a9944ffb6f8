package overlay

import (
	"io/fs"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spf13/afero"
)

// handleSet tracks the files that read-only handles have open, so that a
// copy-up can give each of them the upper copy, which it reads from then
// on, as on Linux since 4.19 (a file in the upper is copied up only after a
// Commit made it a lower one); the files that handles have open to change,
// so that a Commit can move each to its copy in the new upper; and the
// directories that handles have open, so that they follow renames and see
// removals.
type handleSet struct {
	mu     sync.Mutex        // guards chains, emptied, every chain and every node's next, gone, inUpper and copy, and last
	chains map[string]*chain // by resolved name: the handles on it

	// emptied counts the chains that lost their last handle since the
	// empty ones were last dropped. An empty chain stays, so that the next
	// handle on its name, most often the same name opened again, takes it
	// up without a map insert, and the close before it made no map
	// delete; the empty ones go once they may outnumber the others (see
	// release).
	emptied int

	// last holds what a directory handle's directory was when it was
	// removed, which Stat on the handle goes on reporting.
	last map[*node]fs.FileInfo

	// epoch counts the copy-ups, renames and removals reported, and
	// changes holds the names the latest of them were made at, so that a
	// handle about to be tracked can tell whether its file was moved,
	// replaced or copied up since it was looked up, and not start over for
	// a change elsewhere. Both change under mu.
	epoch   atomic.Uint64
	changes [keptChanges]change
}

// keptChanges is how many of the latest changes the set keeps the names
// of; a handle looked up before those starts over.
const keptChanges = 64

// change holds the names one reported change was made at, each with
// everything under it ("." is every name); b is "" but for a rename.
type change struct{ a, b string }

// touches reports whether the change may have moved, replaced or copied up
// the file or directory at name.
func (c change) touches(name string) bool {
	return c.a == "." || under(name, c.a) || (c.b != "" && under(name, c.b))
}

// changed counts a change at a and b (see change). The caller holds s.mu.
func (s *handleSet) changed(a, b string) {
	s.changes[s.epoch.Add(1)%keptChanges] = change{a, b}
}

// touchedSince reports whether a change counted after the epoch since
// touches name. The caller holds s.mu.
func (s *handleSet) touchedSince(name string, since uint64) bool {
	now := s.epoch.Load()
	if now-since > keptChanges {
		return true
	}
	for e := since + 1; e <= now; e++ {
		if s.changes[e%keptChanges].touches(name) {
			return true
		}
	}
	return false
}

// chain is the handles on one name. Each handle's node points to its
// chain, which holds the name: a rename renames the chain, and so every
// handle on it.
type chain struct {
	path  string
	first *node
}

// unlink takes n off the chain.
func (c *chain) unlink(n *node) {
	if c.first == n {
		c.first = n.next
		return
	}
	for p := c.first; p != nil; p = p.next {
		if p.next == n {
			p.next = n.next
			return
		}
	}
}

// keptEmpty is how many empty chains the set keeps at least (see emptied).
const keptEmpty = 64

// node is one handle's record of the file or directory it has open. It
// lives in the handle, so that opening allocates nothing more; the handles
// on one name are chained.
type node struct {
	chain *chain // the handles on the name, which holds the name
	next  *node  // the next handle on the same name
	gone  bool   // whether the name was removed or replaced
	dir   bool   // whether the handle is a directory's

	// inUpper says that the file the handle reads is in the upper layer,
	// its own or the copy it was given, so that a Reset discards it. (The
	// three flags sit together: the node lives in every handle.)
	inUpper bool

	// writer is the handle, if it is open to change its file, which a
	// Commit moves to the file's copy in the new upper.
	writer *file

	// copy is the upper copy of a lower file, opened for the handle when
	// the file was copied up, until the handle switches to it. It is that
	// copy whatever happens to the name afterwards: removed, or replaced,
	// it is still what the handle reads, as a kernel overlay's handle
	// reads the copy its inode was given.
	copy afero.File
	gen  atomic.Uint64 // bumped when copy is set
}

// acquire records that the handle of n has the file name open, unless a
// change counted after the epoch since touches name: then it reports
// false, and the caller looks the name up again.
func (s *handleSet) acquire(name string, n *node, since uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.add(name, n, since)
}

// acquireWriter is acquire for the handle f, open to change its upper file
// name.
func (s *handleSet) acquireWriter(name string, f *file, since uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := &f.own
	n.writer, n.inUpper = f, true
	if !s.add(name, n, since) {
		return false
	}
	f.node = n // f is not returned yet: no lock needed
	return true
}

// add is acquire's worker. The caller holds s.mu.
func (s *handleSet) add(name string, n *node, since uint64) bool {
	if s.touchedSince(name, since) {
		return false
	}
	c := s.chains[name]
	if c == nil {
		if s.chains == nil {
			s.chains = make(map[string]*chain)
		}
		c = &chain{path: name}
		s.chains[name] = c
	}
	n.chain, n.next = c, c.first
	c.first = n
	return true
}

// release forgets the handle of n, closing the upper copy opened for it if
// the handle never switched to it. A node the set no longer holds (its
// file was removed) is left alone.
func (s *handleSet) release(n *node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n.dir {
		delete(s.last, n)
	}
	if n.copy != nil {
		_ = n.copy.Close() // best effort: the copy was only opened
		n.copy = nil
	}
	if n.gone {
		return
	}
	n.chain.unlink(n)
	if n.chain.first == nil {
		s.emptied++
		if s.emptied > keptEmpty && s.emptied > len(s.chains)/2 {
			s.dropEmpty()
		}
	}
}

// dropEmpty drops the chains that hold no handle. The caller holds s.mu.
func (s *handleSet) dropEmpty() {
	for p, c := range s.chains {
		if c.first == nil {
			delete(s.chains, p)
		}
	}
	s.emptied = 0
}

// takeCopy returns the upper copy opened for n's handle, if any, which the
// handle owns from then on, and the generation that reflects.
func (s *handleSet) takeCopy(n *node) (afero.File, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := n.copy
	n.copy = nil
	return c, n.gen.Load()
}

// name returns n's current name, and false if it was removed or replaced
// since.
func (s *handleSet) name(n *node) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return n.chain.path, !n.gone
}

// copiedUp records that name now has its copy in the upper up, and opens
// that copy for every handle on the lower file, which switches to it on
// its next call. The caller holds o.mu for writing, so the copy is still at
// name. A copy that cannot be opened leaves the handle reading the lower
// file.
func (s *handleSet) copiedUp(name string, up *layer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.changed(name, "")
	c := s.chains[name]
	if c == nil {
		return
	}
	for n := c.first; n != nil; n = n.next {
		if n.writer != nil {
			continue // moved by the Commit that copies it up (see Overlay.copyUpWriters)
		}
		c, err := up.open(name, os.O_RDONLY, 0)
		if err != nil {
			continue
		}
		if n.copy != nil {
			_ = n.copy.Close() // best effort: a copy never read, from before a Commit
		}
		n.copy = c
		n.inUpper = true
		n.gen.Add(1)
	}
}

// committed records that a Commit made the upper a lower layer: every
// handle's file is in a lower layer now, and a copy-up gives it a copy.
func (s *handleSet) committed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.chains {
		for n := c.first; n != nil; n = n.next {
			n.inUpper = false
		}
	}
}

// liveWriter is a handle open to change its file, and the file's name.
type liveWriter struct {
	name string
	f    *file
}

// liveWriters returns the handles open to change files that are still at
// their names.
func (s *handleSet) liveWriters() []liveWriter {
	s.mu.Lock()
	defer s.mu.Unlock()
	var live []liveWriter
	for p, c := range s.chains {
		for n := c.first; n != nil; n = n.next {
			if n.writer != nil {
				live = append(live, liveWriter{p, n.writer})
			}
		}
	}
	return live
}

// movedUp records that the handle of n now has its file's upper copy open.
func (s *handleSet) movedUp(n *node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n.inUpper = true
}

// discarded records that a Reset emptied the upper layer: the handles
// whose files were in it keep reading them, as handles on removed files
// do, and are forgotten, so that a later copy-up of the name, from a lower
// file, does not reach them.
func (s *handleSet) discarded() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.changed(".", "")
	for p, c := range s.chains {
		var kept *node
		for n := c.first; n != nil; {
			next := n.next
			if n.inUpper {
				n.gone, n.next = true, nil
			} else {
				n.next, kept = kept, n
			}
			n = next
		}
		c.first = kept
		if kept == nil {
			delete(s.chains, p)
		}
	}
	s.emptied = 0 // no empty chain is left
}

// renamed records that oldName and everything under it moved to newName.
// Handles on a file the move replaced are forgotten. A lower file is
// copied up before it moves, so no handle has a copy to open here.
func (s *handleSet) renamed(oldName, newName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.changed(oldName, newName)
	if oldName == newName {
		return
	}
	s.forget(newName)
	var moved []*chain
	for p, c := range s.chains {
		if under(p, oldName) {
			delete(s.chains, p)
			moved = append(moved, c)
		}
	}
	for _, c := range moved {
		c.path = newName + c.path[len(oldName):]
		s.chains[c.path] = c
	}
}

// dirsUnder records, for every directory handle on name or under it, what
// info says its directory is, before a removal takes the directory away
// (see lastInfo).
func (s *handleSet) dirsUnder(name string, info func(path string) fs.FileInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, c := range s.chains {
		if !under(p, name) {
			continue
		}
		for n := c.first; n != nil; n = n.next {
			if !n.dir {
				continue
			}
			if fi := info(p); fi != nil {
				if s.last == nil {
					s.last = make(map[*node]fs.FileInfo)
				}
				s.last[n] = fi
			}
		}
	}
}

// lastInfo returns what the directory of the handle of n was when it was
// removed, if it was.
func (s *handleSet) lastInfo(n *node) fs.FileInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[n]
}

// removed forgets name and everything under it: handles keep reading what
// they have, as an unlinked file's handles do.
func (s *handleSet) removed(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.changed(name, "")
	s.forget(name)
}

// forget drops the handles on name and everything under it from the set,
// marking them gone. The caller holds s.mu.
func (s *handleSet) forget(name string) {
	for p, c := range s.chains {
		if under(p, name) {
			delete(s.chains, p)
			for n := c.first; n != nil; n = n.next {
				n.gone = true
			}
		}
	}
}

// under reports whether name is dir or lies beneath it.
func under(name, dir string) bool {
	rest, ok := strings.CutPrefix(name, dir)
	return ok && (rest == "" || rest[0] == '/')
}
