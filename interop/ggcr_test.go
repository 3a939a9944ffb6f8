package interop

import (
	"bytes"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestGGCRExtract builds an image of our exported layers with
// go-containerregistry and checks that its mutate.Extract gives the tree of
// our merged view: the stacked layers flattened, and the layers applied.
func TestGGCRExtract(t *testing.T) {
	if !isRoot() {
		t.Skip("owners of the extracted trees need root")
	}
	for _, st := range stacks(t) {
		t.Run(st.name, func(t *testing.T) {
			extracted := t.TempDir()
			extractRaw(t, ggcrExtract(t, st.layers), extracted, keepMarkers)
			if err := compareTrees(t, flattenLayers(t, st.layers), extracted); err != nil {
				t.Errorf("mutate.Extract differs from our Flatten of the merged view:\n%v", err)
			}
			if err := compareTrees(t, applyLayers(t, st.layers), extracted); err != nil {
				t.Errorf("mutate.Extract differs from our ApplyLayer of the layers:\n%v", err)
			}
		})
	}
}

// ggcrExtract returns the flattened filesystem of an image made of the
// layers, bottom first, as go-containerregistry extracts it.
func ggcrExtract(t *testing.T, layers [][]byte) []byte {
	t.Helper()
	var ls []v1.Layer
	for _, b := range layers {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		t.Fatal(err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
