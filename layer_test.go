package overlay

import "testing"

func TestLayerPathAs(t *testing.T) {
	rooted, plain := layer{rooted: true}, layer{}
	tests := []struct {
		l       layer
		name    string
		spelled string
		want    string
	}{
		{rooted, "a/b", "/a/b", "/a/b"},       // the caller's spelling is the layer's form
		{rooted, "a/b", "a/b", "/a/b"},        // unrooted spelling: built
		{rooted, "a/b", "/a//b", "/a/b"},      // unclean spelling: built
		{rooted, "a/b", "/x/b", "/a/b"},       // a symlink led elsewhere
		{rooted, "a/b", "/a/bc", "/a/b"},      // longer
		{rooted, ".", "/", "/"},               // the root
		{rooted, "a", "", "/a"},               // nothing spelled
		{plain, "a/b", "a/b", "a/b"},          // the same
		{plain, "a/b", "/a/b", "a/b"},         // rooted spelling on an unrooted layer
		{plain, "a/b", "a/c", "a/b"},          // another name
		{rooted, "a/b", "\x00a/b", "/a/b"},    // not a slash in front
		{rooted, "ab", "/ab", "/ab"},          // one component
		{rooted, "a/b/c", "/a/b/c", "/a/b/c"}, // deeper
	}
	for _, tt := range tests {
		if got := tt.l.pathAs(tt.name, tt.spelled); got != tt.want {
			t.Errorf("rooted=%v pathAs(%q, %q) = %q, want %q", tt.l.rooted, tt.name, tt.spelled, got, tt.want)
		}
		if got := tt.l.pathAs(tt.name, tt.spelled); got != tt.l.path(tt.name) {
			t.Errorf("rooted=%v pathAs(%q, %q) = %q, path gives %q", tt.l.rooted, tt.name, tt.spelled, got, tt.l.path(tt.name))
		}
	}
}
