package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The example layers shipped in testdata/layers.
var (
	appTar  = filepath.Join("..", "..", "testdata", "layers", "app.tar")
	baseTar = filepath.Join("..", "..", "testdata", "layers", "base.tar")
)

// ovl runs the command with args and returns its exit status and output.
func ovl(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	e := &env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut}
	code = run(e, args)
	return code, out.String(), errOut.String()
}

// stackArgs are the arguments naming the example image.
func stackArgs() []string {
	return []string{"--lower", appTar, "--lower", baseTar}
}

func TestTestdataLayersAreTheDemo(t *testing.T) {
	base, app, err := demoLayers()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{baseTar: base, appTar: app} {
		got, err := os.ReadFile(name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s differs from the demo layer (%v): run go run ./cmd/ovl demo --write testdata/layers", name, err)
		}
	}
}

func TestReadCommands(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"cat", "/etc/hostname", "/lib/libc.so"}, "app\nlibc\n"},
		{[]string{"ls", "/etc"}, "hostname\nhosts\nos-release\n"},
		{[]string{"ls", "/"}, "app/\nbin/\netc/\nlib\ntmp/\nusr/\nvar/\n"},
		{[]string{"ls", "/var/cache", "/usr/share"}, "/var/cache:\napp.db\n/usr/share:\n"},
		{[]string{"ls", "-l", "/app/app.conf.default"}, "-rw-r--r--    0:0       12 2024-01-01 00:00 app.conf.default\n"},
		{[]string{"tree", "/var"}, "/var\n└── cache/\n    └── app.db\n"},
		{[]string{"stat", "/lib"}, "  File: /lib\n  Link: usr/lib\n  Type: symbolic link\n  Mode: Lrwxrwxrwx (0777)\n  Size: 0\n Owner: 0:0\nModify: 2024-01-01T00:00:00Z\n"},
		{[]string{"stat", "-L", "/tmp"}, "  File: /tmp\n  Type: directory\n  Mode: dtrwxrwxrwx (1777)\n  Size: 0\n Owner: 0:0\nModify: 2024-01-01T00:00:00Z\n"},
	}
	for _, tt := range tests {
		args := append(append([]string{tt.args[0]}, stackArgs()...), tt.args[1:]...)
		code, out, errOut := ovl(t, "", args...)
		if code != 0 || out != tt.want {
			t.Errorf("ovl %s = %d, %q (stderr %q); want 0, %q", strings.Join(tt.args, " "), code, out, errOut, tt.want)
		}
	}
}

func TestTree(t *testing.T) {
	code, out, _ := ovl(t, "", append([]string{"tree"}, stackArgs()...)...)
	want := `/
├── app/
│   ├── app.conf
│   ├── app.conf.default
│   └── server
├── bin/
│   └── sh
├── etc/
│   ├── hostname
│   ├── hosts
│   └── os-release
├── lib -> usr/lib
├── tmp/
├── usr/
│   ├── lib/
│   │   └── libc.so
│   └── share/
└── var/
    └── cache/
        └── app.db
`
	if code != 0 || out != want {
		t.Errorf("ovl tree = %d:\n%s\nwant:\n%s", code, out, want)
	}
}

func TestErrorsAndUsage(t *testing.T) {
	tests := []struct {
		args   []string
		code   int
		stderr string
	}{
		{nil, 2, "usage: ovl COMMAND"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"cat", "--lower", appTar, "/nope"}, 1, "ovl cat: open /nope: no such file or directory"},
		{[]string{"cat", "--lower", appTar}, 2, "no PATH given"},
		{[]string{"ls", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"ls"}, 2, "no layers"},
		{[]string{"ls", "--lower", "/does/not/exist"}, 1, "no such file or directory"},
		{[]string{"diff", "--lower", appTar}, 2, "--upper DIR is required"},
		{[]string{"apply", appTar}, 2, "want LAYER and DIR"},
		{[]string{"export", "--upper", ".", "--clamp", "yesterday"}, 2, "--clamp"},
	}
	for _, tt := range tests {
		code, _, errOut := ovl(t, "", tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.stderr) {
			t.Errorf("ovl %q = %d, stderr %q; want %d, stderr containing %q", tt.args, code, errOut, tt.code, tt.stderr)
		}
	}
}

func TestHelp(t *testing.T) {
	for name := range commands() {
		code, out, errOut := ovl(t, "", name, "--help")
		if code != 0 || !strings.HasPrefix(out, "usage: ovl "+name) || errOut != "" {
			t.Errorf("ovl %s --help = %d, %q, %q; want the usage on stdout", name, code, out, errOut)
		}
	}
	if code, out, _ := ovl(t, "", "--help"); code != 0 || !strings.Contains(out, "flatten") {
		t.Errorf("ovl --help = %d, %q", code, out)
	}
}

func TestGzipLower(t *testing.T) {
	b, err := os.ReadFile(appTar)
	if err != nil {
		t.Fatal(err)
	}
	gz := filepath.Join(t.TempDir(), "app.tar.gz")
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	if err := os.WriteFile(gz, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := ovl(t, "", "cat", "--lower", gz, "--lower", baseTar, "/app/app.conf")
	if code != 0 || out != "port = 8080\n" {
		t.Errorf("cat through a gzipped lower = %d, %q, %q", code, out, errOut)
	}
}

// TestWriteCommands runs diff, export, apply and flatten on an upper
// directory over the example image, and checks that applying the layers
// gives the flattened view.
func TestWriteCommands(t *testing.T) {
	dir := t.TempDir()
	upper := filepath.Join(dir, "upper")
	mustWrite(t, filepath.Join(upper, "etc", ".wh.hosts"), "")
	mustWrite(t, filepath.Join(upper, "etc", "motd"), "hello\n")
	code, out, errOut := ovl(t, "", append([]string{"diff", "--upper", upper}, stackArgs()...)...)
	if want := "C /etc\nD /etc/hosts\nA /etc/motd\n"; code != 0 || out != want {
		t.Errorf("ovl diff = %d, %q, %q; want %q", code, out, errOut, want)
	}
	code, layer, errOut := ovl(t, "", append([]string{"export", "--upper", upper}, stackArgs()...)...)
	if code != 0 {
		t.Fatalf("ovl export = %d, %q", code, errOut)
	}
	flat := filepath.Join(dir, "flat")
	if code, _, errOut := ovl(t, "", append([]string{"flatten", "--upper", upper, flat}, stackArgs()...)...); code != 0 {
		t.Fatalf("ovl flatten = %d, %q", code, errOut)
	}
	applied := filepath.Join(dir, "applied")
	for _, l := range []string{baseTar, appTar} {
		if code, _, errOut := ovl(t, "", "apply", l, applied); code != 0 {
			t.Fatalf("ovl apply %s = %d, %q", l, code, errOut)
		}
	}
	if code, _, errOut := ovl(t, layer, "apply", "-", applied); code != 0 {
		t.Fatalf("ovl apply - = %d, %q", code, errOut)
	}
	if got, want := treeOf(t, applied), treeOf(t, flat); got != want {
		t.Errorf("applied layers:\n%s\nflattened view:\n%s", got, want)
	}
	if code, _, errOut := ovl(t, "", append([]string{"flatten", flat}, stackArgs()...)...); code != 1 || !strings.Contains(errOut, "not empty") {
		t.Errorf("ovl flatten into a non-empty dir = %d, %q", code, errOut)
	}
}

// mustWrite writes a file, creating its directory.
func mustWrite(t *testing.T, name, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// treeOf describes the tree under dir: names, modes, contents, targets and
// mtimes.
func treeOf(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		extra := ""
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			extra, err = os.Readlink(p)
		case info.Mode().IsRegular():
			var data []byte
			data, err = os.ReadFile(p)
			extra = string(data)
		}
		b.WriteString(rel + " " + info.Mode().String() + " " + info.ModTime().UTC().Format(time.RFC3339) + " " + extra + "\n")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestClampOption(t *testing.T) {
	for _, v := range []string{"1704067200", "2024-01-01T00:00:00Z"} {
		opts, err := clampOption(v)
		if err != nil || len(opts) != 1 {
			t.Errorf("clampOption(%q) = %v, %v", v, opts, err)
		}
	}
	if opts, err := clampOption(""); opts != nil || err != nil {
		t.Errorf("clampOption(\"\") = %v, %v; want no option", opts, err)
	}
}

func TestDemo(t *testing.T) {
	code, out, errOut := ovl(t, "", "demo")
	for _, want := range []string{"base.tar, the bottom layer:", "├── lib -> usr/lib", "  D /bin/sh", "bin/.wh.sh"} {
		if !strings.Contains(out, want) {
			t.Errorf("ovl demo output lacks %q", want)
		}
	}
	if code != 0 || errOut != "" {
		t.Errorf("ovl demo = %d, stderr %q", code, errOut)
	}
	dir := t.TempDir()
	if code, _, errOut := ovl(t, "", "demo", "--write", dir); code != 0 {
		t.Fatalf("ovl demo --write = %d, %q", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "app.tar")); err != nil {
		t.Error(err)
	}
}

func TestProgress(t *testing.T) {
	delay := progressDelay
	progressDelay = 0
	defer func() { progressDelay = delay }()
	var errOut bytes.Buffer
	e := &env{stdout: io.Discard, stderr: &errOut, stderrTTY: true}
	p := startProgress(e, "export", 4<<20)
	for range 4 {
		p.add(1 << 20)
		time.Sleep(3 * progressTick / 2)
	}
	p.finish()
	got := errOut.String()
	if !strings.Contains(got, "\rexport  [") || !strings.HasSuffix(got, "100% 4.0 MiB/4.0 MiB\n") {
		t.Errorf("progress drew %q", got)
	}
	errOut.Reset()
	e.stderrTTY = false
	p = startProgress(e, "export", 4<<20)
	p.add(4 << 20)
	p.finish()
	if errOut.Len() != 0 {
		t.Errorf("progress drew %q without a terminal", errOut.String())
	}
}
