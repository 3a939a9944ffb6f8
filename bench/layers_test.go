package bench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/spf13/afero"
)

// The kinds of layer a tree is built of.
const (
	kindMem  = "mem"  // afero.MemMapFs
	kindDisk = "disk" // host directories through afero.BasePathFs
)

// kinds lists the kinds every workload runs on, in run order.
var kinds = []string{kindMem, kindDisk}

// lowerCounts lists the numbers of lowers every workload runs with.
var lowerCounts = []int{1, 8, 64}

// Names in every tree. Each lower holds /d/sub with a file of its own
// (fNN) and a file that every lower holds (shared), so /d and /d/sub merge
// over all the layers; only the bottom lower holds the files below.
const (
	bottomFile  = "/d/sub/bottom.dat" // 8 KiB, only in lowers[N-1]
	missingFile = "/d/sub/missing"    // in no layer
	createDir   = "/cdir"             // an empty directory in every lower, none in the upper
	copyDir     = "/big"              // holds the copy-up files, only in lowers[N-1]
	bottomSize  = 8 << 10
)

// copySizes are the copy-up file sizes: 64 MiB always, 1 GiB when big().
var copySizes = []struct {
	label string
	size  int64
}{
	{"64MiB", 64 << 20},
	{"1GiB", 1 << 30},
}

// copyFile names the copy-up file of the given size label.
func copyFile(label string) string { return copyDir + "/c" + label }

// layerDir is one layer: its afero.Fs and, for a disk layer, its host
// directory.
type layerDir struct {
	fs  afero.Fs
	dir string // "" for a MemMapFs layer
}

// tree is the set of layers that every implementation reads for one kind of
// layer and one number of lowers. It is built once and shared by every
// implementation and iteration; the read workloads never change it.
type tree struct {
	kind   string
	n      int
	dir    string     // the tree's host directory (disk only)
	lowers []layerDir // lowers[0] topmost
	floor  layerDir   // the merged result as one plain layer
	upper  layerDir   // the upper shared by the read workloads

	readdirOnce sync.Once
	readdirErr  error
}

var (
	treesMu sync.Mutex
	trees   = map[string]*tree{}
	seq     atomic.Int64 // names fresh directories
)

// getTree returns the tree for kind and n, building it the first time.
func getTree(b *testing.B, kind string, n int) *tree {
	b.Helper()
	treesMu.Lock()
	defer treesMu.Unlock()
	key := fmt.Sprintf("%s%d", kind, n)
	if t := trees[key]; t != nil {
		return t
	}
	t, err := buildTree(kind, n)
	if err != nil {
		b.Fatalf("building the %s tree with %d lowers: %v", kind, n, err)
	}
	trees[key] = t
	return t
}

// lowerFss returns the lowers' file systems, topmost first.
func (t *tree) lowerFss() []afero.Fs {
	fss := make([]afero.Fs, len(t.lowers))
	for i, l := range t.lowers {
		fss[i] = l.fs
	}
	return fss
}

// lowerDirs returns the lowers' host directories, topmost first.
func (t *tree) lowerDirs() []string {
	dirs := make([]string, len(t.lowers))
	for i, l := range t.lowers {
		dirs[i] = l.dir
	}
	return dirs
}

// bottom returns the bottom lower, lowers[N-1].
func (t *tree) bottom() layerDir { return t.lowers[len(t.lowers)-1] }

// newLayer returns a new empty layer of the tree's kind named name.
func (t *tree) newLayer(name string) (layerDir, error) {
	if t.kind == kindMem {
		return layerDir{fs: afero.NewMemMapFs()}, nil
	}
	dir := filepath.Join(t.dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return layerDir{}, err
	}
	return layerDir{fs: afero.NewBasePathFs(afero.NewOsFs(), dir), dir: dir}, nil
}

// freshLayer returns a new empty layer with a name never used before, such
// as the fresh upper of a write workload.
func (t *tree) freshLayer() (layerDir, error) {
	return t.newLayer(fmt.Sprintf("u%d", seq.Add(1)))
}

// drop removes a layer made by freshLayer.
func (l layerDir) drop() error {
	if l.dir == "" {
		return nil
	}
	return os.RemoveAll(l.dir)
}

// mkdir creates the directory name and its parents in l.
func (l layerDir) mkdir(name string) error {
	if l.dir != "" {
		return os.MkdirAll(l.dir+name, 0o755)
	}
	return l.fs.MkdirAll(name, 0o755)
}

// put creates the file name in l with data; its parent must exist.
func (l layerDir) put(name string, data []byte) error {
	if l.dir != "" {
		return os.WriteFile(l.dir+name, data, 0o644)
	}
	return afero.WriteFile(l.fs, name, data, 0o644)
}

// buildTree builds the tree of kind with n lowers: every lower holds /d/sub
// and /cdir; the bottom one also holds bottomFile and the 64 MiB copy-up
// file. The Readdir directories are added by ensureReaddir when needed.
func buildTree(kind string, n int) (*tree, error) {
	t := &tree{kind: kind, n: n}
	if kind == kindDisk {
		if diskRoot == "" {
			return nil, fmt.Errorf("no disk root: TestMain did not run with -bench")
		}
		t.dir = filepath.Join(diskRoot, fmt.Sprintf("%d", n))
		if err := os.Mkdir(t.dir, 0o755); err != nil {
			return nil, err
		}
	}
	var err error
	if t.floor, err = t.newLayer("f"); err != nil {
		return nil, err
	}
	if t.upper, err = t.newLayer("u"); err != nil {
		return nil, err
	}
	small := bytes.Repeat([]byte("x"), 64)
	all := []layerDir{t.floor}
	for i := range n {
		l, err := t.newLayer(fmt.Sprintf("%02d", i))
		if err != nil {
			return nil, err
		}
		t.lowers = append(t.lowers, l)
		all = append(all, l)
	}
	for i, l := range all {
		for _, d := range []string{"/d/sub", createDir} {
			if err := l.mkdir(d); err != nil {
				return nil, err
			}
		}
		if err := l.put("/d/sub/shared", small); err != nil {
			return nil, err
		}
		if i > 0 {
			if err := l.put(fmt.Sprintf("/d/sub/f%02d", i-1), small); err != nil {
				return nil, err
			}
		}
	}
	for i := range n {
		if err := t.floor.put(fmt.Sprintf("/d/sub/f%02d", i), small); err != nil {
			return nil, err
		}
	}
	for _, l := range []layerDir{t.floor, t.bottom()} {
		if err := l.put(bottomFile, pattern(bottomSize)); err != nil {
			return nil, err
		}
		if err := l.mkdir(copyDir); err != nil {
			return nil, err
		}
		if err := l.put(copyFile(copySizes[0].label), pattern(int(copySizes[0].size))); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// addBigFile puts the copy-up file of the given size into the bottom lower
// and the floor, and returns a function that removes both copies.
func (t *tree) addBigFile(label string, size int64) (func(), error) {
	chunk := pattern(1 << 20)
	for _, l := range []layerDir{t.floor, t.bottom()} {
		f, err := l.fs.Create(copyFile(label))
		if err != nil {
			return nil, err
		}
		for off := int64(0); off < size; off += int64(len(chunk)) {
			if _, err := f.Write(chunk); err != nil {
				f.Close()
				return nil, err
			}
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
	}
	return func() {
		_ = t.floor.fs.Remove(copyFile(label))    // best effort: frees memory early
		_ = t.bottom().fs.Remove(copyFile(label)) // best effort: frees memory early
	}, nil
}

// pattern returns n bytes of a repeating, non-zero pattern.
func pattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte('a' + i%23)
	}
	return p
}

// The Readdir workload lists one directory of 10k or 100k merged entries
// over 8 lowers. Each implementation lists its own variant of the directory,
// built in the same layers, since they express whiteouts differently:
const (
	variantOCI    = "oci"   // OCI whiteouts ".wh.NAME" (overlay)
	variantKernel = "kern"  // character devices 0:0 (kernel)
	variantPlain  = "plain" // no whiteouts at all: the hidden names show (cow, bep)
	readdirLowers = 8
)

// readdirSizes are the merged directory sizes.
var readdirSizes = []struct {
	label string
	size  int
}{
	{"10k", 10_000},
	{"100k", 100_000},
}

// readdirPath returns the directory that impl lists for a size label.
func readdirPath(impl, label string) string {
	switch impl {
	case implFloor:
		return "/rd" + label
	case implOverlay, implUpper:
		return "/rd" + label + "/" + variantOCI
	case implKernel:
		return "/rd" + label + "/" + variantKernel
	}
	return "/rd" + label + "/" + variantPlain
}

// readdirWant returns how many entries impl lists in the directory of the
// given size: cow and bep cannot hide the whited-out names, so they list
// those too; the upper holds a tenth of them.
func readdirWant(impl string, size int) int {
	switch impl {
	case implCow, implBep:
		return size + size/10
	case implUpper:
		return size / 10 // see buildReaddir
	}
	return size
}

// ensureReaddir adds the Readdir directories to the tree, once.
func (t *tree) ensureReaddir(b *testing.B) {
	b.Helper()
	t.readdirOnce.Do(func() {
		for _, s := range readdirSizes {
			if t.readdirErr = t.buildReaddir(s.label, s.size); t.readdirErr != nil {
				return
			}
		}
	})
	if t.readdirErr != nil {
		b.Fatalf("building the Readdir directories: %v", t.readdirErr)
	}
}

// buildReaddir builds the directories of size entries. Of the names
// eNNNNNN, 1 in 20 is in the upper only, 1 in 20 is in the upper and
// shadows a lower copy, and the rest are spread over the lowers, 1 in 4 of
// them also shadowing copies in up to 3 lowers below. Besides, size/10
// names wNNNNNN sit in lowers 1 to 7 (half of them also in the bottom one)
// and are whited out in the lower just above. The floor holds the size
// visible names.
func (t *tree) buildReaddir(label string, size int) error {
	if len(t.lowers) != readdirLowers {
		return fmt.Errorf("the Readdir directories need %d lowers, not %d", readdirLowers, len(t.lowers))
	}
	floorDir := "/rd" + label
	if err := t.floor.mkdir(floorDir); err != nil {
		return err
	}
	for i := range size {
		if err := t.floor.put(fmt.Sprintf("%s/e%06d", floorDir, i), nil); err != nil {
			return err
		}
	}
	variants := []string{variantOCI, variantPlain}
	if t.kind == kindDisk && canMount() {
		variants = append(variants, variantKernel)
	}
	for _, v := range variants {
		dir := floorDir + "/" + v
		layers := append([]layerDir{t.upper}, t.lowers...) // layers[k+1] is lowers[k]
		for _, l := range layers {
			if err := l.mkdir(dir); err != nil {
				return err
			}
		}
		for i := range size {
			name := fmt.Sprintf("%s/e%06d", dir, i)
			var in []int // indexes into layers
			switch {
			case i%20 == 0:
				in = []int{0}
			case i%20 == 10:
				in = []int{0, 1 + (i/20)%readdirLowers}
			default:
				h := i % readdirLowers
				in = []int{1 + h}
				if i%4 == 1 {
					for k := h + 1; k <= min(h+3, readdirLowers-1); k++ {
						in = append(in, 1+k)
					}
				}
			}
			for _, k := range in {
				if err := layers[k].put(name, nil); err != nil {
					return err
				}
			}
		}
		for j := range size / 10 {
			base := fmt.Sprintf("w%06d", j)
			k := 1 + j%(readdirLowers-1) // the lower holding it, 1..7
			in := []int{k}
			if j%2 == 0 && k < readdirLowers-1 {
				in = append(in, readdirLowers-1)
			}
			for _, h := range in {
				if err := t.lowers[h].put(dir+"/"+base, nil); err != nil {
					return err
				}
			}
			above := t.lowers[k-1]
			switch v {
			case variantOCI:
				if err := above.put(dir+"/.wh."+base, nil); err != nil {
					return err
				}
			case variantKernel:
				if err := mknodWhiteout(above.dir + dir + "/" + base); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
