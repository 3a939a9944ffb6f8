package overlay

import (
	"os"
	"path"
	"strings"

	"github.com/spf13/afero"
)

// The OCI image-layer markers (image-spec layer.md), also used by aufs.
const (
	// whiteoutPrefix starts every reserved name; ".wh.NAME" hides NAME in
	// the layers below the one that holds it.
	whiteoutPrefix = ".wh."
	// opaqueMarker inside a directory hides the directory's copies in the
	// layers below.
	opaqueMarker = ".wh..wh..opq"
	// internalPrefix starts the overlay's own names, such as the work
	// directory; they are never listed and hide nothing.
	internalPrefix = ".wh..wh."
	// workDir holds copy-ups and doomed directories while they are built or
	// torn down, at the root of the upper.
	workDir = ".wh..wh.work"
)

// isReserved reports whether a name component is reserved for markers.
func isReserved(base string) bool {
	return strings.HasPrefix(base, whiteoutPrefix)
}

// hiddenName returns the name a listing entry whites out, and whether it is
// a whiteout at all. Opaque markers and internal names hide no name.
func hiddenName(base string) (string, bool) {
	if !isReserved(base) || strings.HasPrefix(base, internalPrefix) {
		return "", false
	}
	return base[len(whiteoutPrefix):], true
}

// whiteoutPath returns the path of the whiteout for name.
func whiteoutPath(name string) string {
	return join(parentOf(name), whiteoutPrefix+baseOf(name))
}

// hasWhiteout reports whether layer l whites out name. Lookups ask this
// often, so the marker's name is built in the layer's form in one step.
func (l layer) hasWhiteout(name string) (bool, error) {
	if l.noOCI {
		return l.whiteoutDevAt(name)
	}
	dir, base := path.Split(name)
	if l.rooted {
		return l.exists0("/" + dir + whiteoutPrefix + base)
	}
	return l.exists0(dir + whiteoutPrefix + base)
}

// isOpaque reports whether the directory dir in layer l is opaque.
func (l layer) isOpaque(dir string) (bool, error) {
	if l.kernel {
		if opaque, err := l.opaqueXattr(dir); err != nil || opaque || l.noOCI {
			return opaque, err
		}
	}
	switch {
	case dir == ".":
		return l.exists0(l.path(opaqueMarker))
	case l.rooted:
		return l.exists0("/" + dir + "/" + opaqueMarker)
	}
	return l.exists0(dir + "/" + opaqueMarker)
}

// exists0 reports whether p, a name already in the layer's form, exists.
func (l layer) exists0(p string) (bool, error) {
	var err error
	if ls, ok := l.fs.(afero.Lstater); ok {
		_, _, err = ls.LstatIfPossible(p)
	} else {
		_, err = l.fs.Stat(p)
	}
	switch {
	case err == nil:
		return true, nil
	case isNotExist(err):
		return false, nil
	}
	return false, err
}

// addWhiteout hides name from the layers below the upper l. Its parent
// must already be a directory in l.
func (l layer) addWhiteout(name string) error {
	if l.noOCI {
		return l.mknodWhiteout(name)
	}
	return l.createEmpty(whiteoutPath(name))
}

// dropWhiteout removes l's whiteout for name, if there is one. In the
// kernel format only a whiteout device at name is removed, never anything
// else there.
func (l layer) dropWhiteout(name string) error {
	if l.noOCI {
		wh, err := l.whiteoutDevAt(name)
		if err != nil || !wh {
			return err
		}
		return l.remove(name)
	}
	err := l.remove(whiteoutPath(name))
	if err != nil && !isNotExist(err) {
		return err
	}
	return nil
}

// markOpaque makes the directory dir in l opaque.
func (l layer) markOpaque(dir string) error {
	if l.noOCI {
		return l.setOpaqueXattr(dir)
	}
	return l.createEmpty(join(dir, opaqueMarker))
}

// createEmpty creates name as an empty regular file, the form of both OCI
// markers.
func (l layer) createEmpty(name string) error {
	f, err := l.open(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// join joins an overlay directory name and a child name.
func join(dir, base string) string {
	if dir == "." {
		return base
	}
	return dir + "/" + base
}

// parentOf returns the directory holding name, "." at the top.
func parentOf(name string) string {
	return path.Dir(name)
}

// baseOf returns the last component of name.
func baseOf(name string) string {
	return path.Base(name)
}
