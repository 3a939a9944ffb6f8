package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay"
)

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// stackFlags are the flags that describe a stack of layers.
type stackFlags struct {
	lowers listFlag
	upper  string
}

// register adds --lower and --upper to fs.
func (s *stackFlags) register(fs *flag.FlagSet) {
	fs.Var(&s.lowers, "lower", "a lower `LAYER`: a directory, a .tar or a .tar.gz; repeatable, topmost first")
	fs.StringVar(&s.upper, "upper", "", "the upper `DIR`, an overlay upper in the OCI layer format")
}

// stack is an opened stack of layers; close releases what opening took.
type stack struct {
	o       *overlay.Overlay
	closers []func()
}

func (s *stack) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

// openView opens the stack read-only: the upper, if given, is the topmost
// layer and is never written.
func (s *stackFlags) openView() (*stack, error) {
	st := &stack{}
	var layers []afero.Fs
	if s.upper != "" {
		l, err := dirLayer(s.upper)
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	lowers, err := st.openLowers(s.lowers)
	if err != nil {
		st.close()
		return nil, err
	}
	if layers = append(layers, lowers...); len(layers) == 0 {
		return nil, usageError("no layers: give --lower LAYER (and --upper DIR)")
	}
	if st.o, err = overlay.New(nil, layers); err != nil {
		st.close()
		return nil, err
	}
	return st, nil
}

// openUpper opens the stack with --upper as its upper layer, which is
// required. The overlay prepares its work directory in it.
func (s *stackFlags) openUpper() (*stack, error) {
	if s.upper == "" {
		return nil, usageError("--upper DIR is required")
	}
	if _, err := dirLayer(s.upper); err != nil {
		return nil, err
	}
	st := &stack{}
	lowers, err := st.openLowers(s.lowers)
	if err != nil {
		st.close()
		return nil, err
	}
	if st.o, err = overlay.New(afero.NewBasePathFs(afero.NewOsFs(), s.upper), lowers); err != nil {
		st.close()
		return nil, err
	}
	return st, nil
}

// openLowers opens each lower layer.
func (st *stack) openLowers(paths []string) ([]afero.Fs, error) {
	var layers []afero.Fs
	for _, p := range paths {
		l, err := st.openLayer(p)
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	return layers, nil
}

// dirLayer returns the directory dir as a read-only layer.
func dirLayer(dir string) (afero.Fs, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s: not a directory", dir)
	}
	return afero.NewReadOnlyFs(afero.NewBasePathFs(afero.NewOsFs(), dir)), nil
}

// openLayer opens a layer: a directory, or a layer tar, gzipped or not.
func (st *stack) openLayer(p string) (afero.Fs, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return dirLayer(p)
	}
	f, err := st.openTar(p)
	if err != nil {
		return nil, err
	}
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	tfs, err := overlay.NewTarFs(f, info.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return tfs, nil
}

// openTar opens the layer tar p for random access. A gzipped layer is
// decompressed into a temporary file first, since gzip is not seekable.
func (st *stack) openTar(p string) (*os.File, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	st.closers = append(st.closers, func() { f.Close() })
	magic := make([]byte, 2)
	if _, err := io.ReadFull(f, magic); err != nil || !bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		return f, nil // not gzip: NewTarFs judges it
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return st.gunzip(f, p)
}

// gunzip decompresses the gzipped layer f into a temporary file, removed
// when the stack closes.
func (st *stack) gunzip(f *os.File, name string) (*os.File, error) {
	zr, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	tmp, err := os.CreateTemp("", "ovl-"+filepath.Base(name)+"-*.tar")
	if err != nil {
		return nil, err
	}
	st.closers = append(st.closers, func() { tmp.Close(); os.Remove(tmp.Name()) })
	if _, err := io.Copy(tmp, zr); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return tmp, nil
}

// errExists reports an output directory that is not empty.
var errExists = errors.New("exists and is not empty")

// eachPath opens the stack read-only and runs fn on each PATH argument in
// turn, stopping at the first error. At least one PATH is required.
func (s *stackFlags) eachPath(paths []string, fn func(o *overlay.Overlay, p string) error) error {
	if len(paths) == 0 {
		return usageError("no PATH given")
	}
	st, err := s.openView()
	if err != nil {
		return err
	}
	defer st.close()
	for _, p := range paths {
		if err := fn(st.o, p); err != nil {
			return err
		}
	}
	return nil
}
