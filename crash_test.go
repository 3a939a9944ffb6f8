package overlay

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay/overlaytest"
)

// The crash tests run copy-ups and renames in a child process on a disk
// upper, kill it with SIGKILL at random points, and check with a new
// overlay that every file survived whole: its content is one complete
// version the child wrote (or the lower one), and it shows under exactly
// one of its names.

// crashChildEnv carries a crashSpec to the child process.
const crashChildEnv = "OVERLAY_CRASH_CHILD"

// crashSpec tells the child what to do.
type crashSpec struct {
	Dirs         bool   // rename directories rather than files
	Upper, Lower string // host directories of the layers
	Log          string // where the child appends "id version" before writing a version
	Seed         uint64
}

// crashFiles and crashDirs size the trees: files f00… in the files mode;
// directories D0… holding a, b, c in the directory mode.
const (
	crashFiles = 12
	crashDirs  = 4
)

var crashDirFiles = []string{"a", "b", "c", "d", "e", "f"}

// crashContent returns version ver of the file with identity id: a header
// naming both and the length, then pseudo-random bytes, 16 KiB to 400 KiB in
// all, so that a torn copy shows.
func crashContent(id string, ver uint64) []byte {
	h := fnv.New64a()
	h.Write([]byte(id))
	r := rand.New(rand.NewPCG(h.Sum64(), ver))
	size := 16<<10 + r.IntN(384<<10)
	b := fmt.Appendf(nil, "id=%s ver=%d len=%d\n", id, ver, size)
	for len(b) < size {
		b = binary.LittleEndian.AppendUint64(b, r.Uint64())
	}
	return b[:size]
}

// crashCheckContent returns an error unless data is exactly one version of
// id that the child wrote, or version 0, which the lower holds.
func crashCheckContent(data []byte, id string, written map[string]map[uint64]bool) error {
	line, _, _ := bytes.Cut(data, []byte("\n"))
	var gotID string
	var ver uint64
	var size int
	if _, err := fmt.Sscanf(string(line), "id=%s ver=%d len=%d", &gotID, &ver, &size); err != nil {
		return fmt.Errorf("%d bytes with no valid header (%q): a torn file", len(data), line)
	}
	switch {
	case gotID != id:
		return fmt.Errorf("holds %s's version %d", gotID, ver)
	case ver != 0 && !written[id][ver]:
		return fmt.Errorf("holds version %d, which the child never wrote", ver)
	case !bytes.Equal(data, crashContent(id, ver)):
		return fmt.Errorf("holds %d of the %d bytes of version %d, or other bytes: a torn file", len(data), size, ver)
	}
	return nil
}

func TestCrashRecovery(t *testing.T) {
	crashRun(t, false, 8)
}

func TestCrashRecoveryDirRename(t *testing.T) {
	crashRun(t, true, 10)
}

// crashRun kills the child rounds times and checks the upper after each
// kill. Every two rounds share one upper, so that recovery from a recovered
// state is tested too.
func crashRun(t *testing.T, dirs bool, rounds int) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("OVERLAY_CRASH_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("OVERLAY_CRASH_SEED: %v", err)
		}
	}
	t.Logf("seed %d (rerun with OVERLAY_CRASH_SEED=%d)", seed, seed)
	r := rand.New(rand.NewPCG(seed, 0))
	root := t.TempDir()
	spec := crashSpec{Dirs: dirs, Lower: filepath.Join(root, "lower"), Log: filepath.Join(root, "log")}
	crashMakeLower(t, spec)
	ops := 0
	for round := range rounds {
		if round%2 == 0 || dirs {
			spec.Upper = filepath.Join(root, fmt.Sprintf("upper%d", round))
			if err := os.Mkdir(spec.Upper, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		spec.Seed = r.Uint64()
		delay := time.Duration(r.IntN(400)) * time.Millisecond
		from := crashReady
		if dirs {
			// The directory renames come first: every other round kills
			// the child during them, the others after them, however long
			// they take on this machine.
			delay /= 8
			if round%2 == 1 {
				from = crashRenamed
			}
		}
		crashKillChild(t, spec, from, delay)
		ops = crashCheck(t, spec)
		if t.Failed() {
			t.Fatalf("round %d (child seed %d) left a broken upper", round, spec.Seed)
		}
	}
	if ops == 0 {
		t.Fatal("the child never started an operation; nothing was tested")
	}
	t.Logf("%d rounds, %d versions written", rounds, ops)
}

// crashIDs returns the identities of the files and their names in the
// lower.
func crashIDs(dirs bool) map[string]string {
	ids := make(map[string]string)
	if !dirs {
		for i := range crashFiles {
			id := fmt.Sprintf("f%02d", i)
			ids[id] = id
		}
		return ids
	}
	for j := range crashDirs {
		for _, c := range crashDirFiles {
			id := fmt.Sprintf("D%d/%s", j, c)
			ids[id] = id
		}
	}
	return ids
}

// crashMakeLower writes version 0 of every file into the lower.
func crashMakeLower(t *testing.T, spec crashSpec) {
	t.Helper()
	for id, name := range crashIDs(spec.Dirs) {
		p := filepath.Join(spec.Lower, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, crashContent(id, 0), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// crashLayers returns an overlay of the disk upper over the read-only
// lower.
func crashLayers(spec crashSpec) (*Overlay, error) {
	lower := afero.NewReadOnlyFs(afero.NewBasePathFs(afero.NewOsFs(), spec.Lower))
	return New(afero.NewBasePathFs(afero.NewOsFs(), spec.Upper), []afero.Fs{lower})
}

// The lines the child prints on its way: once ready, and in the directory
// mode once the first directory renames are done.
const (
	crashReady   = "ready\n"
	crashRenamed = "renamed\n"
)

// crashKillChild starts the child and SIGKILLs it delay after it printed
// the line from (crashReady or crashRenamed).
func crashKillChild(t *testing.T, spec crashSpec, from string, delay time.Duration) {
	t.Helper()
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+string(js))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(stdout)
	line, err := crashReadUntil(br, from)
	var rest bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = rest.ReadFrom(br) // best effort: only shown in messages
	}()
	output := func() string { return fmt.Sprintf("stdout:\n%s%s\nstderr:\n%s", line, rest.String(), stderr.String()) }
	if err != nil {
		_ = cmd.Process.Kill() // best effort: it is failing anyway
		<-done
		_ = cmd.Wait()
		t.Fatalf("child did not print %q: %v\n%s", from, err, output())
	}
	time.Sleep(delay)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill: %v", err)
	}
	<-done
	err = cmd.Wait()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended by itself before the kill: %v\n%s", err, output())
	}
}

// crashReadUntil reads the child's lines up to the line want, and returns
// what it read. A line that is not the child's next expected one is an
// error.
func crashReadUntil(br *bufio.Reader, want string) (string, error) {
	var read string
	for _, expect := range []string{crashReady, crashRenamed} {
		line, err := br.ReadString('\n')
		read += line
		switch {
		case err != nil:
			return read, err
		case line != expect:
			return read, fmt.Errorf("got %q, want %q", line, expect)
		case line == want:
			return read, nil
		}
	}
	return read, fmt.Errorf("no line %q", want)
}

// crashWritten reads the child's log of started versions.
func crashWritten(t *testing.T, spec crashSpec) (map[string]map[uint64]bool, int) {
	t.Helper()
	data, err := os.ReadFile(spec.Log)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	written := make(map[string]map[uint64]bool)
	n := 0
	for line := range strings.Lines(string(data)) {
		id, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		ver, err := strconv.ParseUint(v, 10, 64)
		if !ok || err != nil {
			continue // the last line may be torn by the kill
		}
		if written[id] == nil {
			written[id] = make(map[uint64]bool)
		}
		written[id][ver] = true
		n++
	}
	return written, n
}

// crashCheck opens a new overlay over the upper the child left and checks
// every file. It returns how many versions the child has logged so far.
func crashCheck(t *testing.T, spec crashSpec) int {
	t.Helper()
	if left, _ := os.ReadDir(filepath.Join(spec.Upper, workDir)); len(left) > 0 {
		t.Logf("the kill interrupted an operation: %d names in the work directory", len(left))
	}
	o, err := crashLayers(spec)
	if err != nil {
		t.Fatalf("New after the crash: %v", err)
	}
	left, err := os.ReadDir(filepath.Join(spec.Upper, workDir))
	if err != nil || len(left) != 0 {
		t.Errorf("work directory after New holds %d names (%v), want none", len(left), err)
	}
	written, n := crashWritten(t, spec)
	root, err := afero.ReadDir(o, ".")
	if err != nil {
		t.Fatalf("ReadDir(.) = %v", err)
	}
	for _, fi := range root {
		if name := fi.Name(); !strings.HasPrefix(name, "t-") && !crashIsName(name) {
			t.Errorf("the merged root shows %q, which no operation makes", name)
		}
	}
	if spec.Dirs {
		crashCheckDirs(t, o, written)
	} else {
		crashCheckFiles(t, o, written)
	}
	return n
}

// crashIsName reports whether name is one of the names the child uses for
// its files or directories: fNN or gNN, Dj or Ej.
func crashIsName(name string) bool {
	return len(name) >= 2 && strings.ContainsRune("fgDE", rune(name[0])) && strings.Trim(name[1:], "0123456789") == ""
}

// crashOther returns the other name of a file or directory: f03 <-> g03,
// D1 <-> E1.
func crashOther(name string) string {
	swap := map[byte]byte{'f': 'g', 'g': 'f', 'D': 'E', 'E': 'D'}
	return string(swap[name[0]]) + name[1:]
}

// crashCheckFiles checks that each file shows under exactly one of its
// names with a whole version.
func crashCheckFiles(t *testing.T, o *Overlay, written map[string]map[uint64]bool) {
	t.Helper()
	for id := range crashIDs(false) {
		name, ok := crashWhere(t, o, id)
		if !ok {
			continue
		}
		data, err := afero.ReadFile(o, name)
		if err != nil {
			t.Errorf("ReadFile(%s) = %v", name, err)
			continue
		}
		if err := crashCheckContent(data, id, written); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// crashCheckDirs checks that each directory shows under exactly one of its
// names, holding exactly its files, each a whole version.
func crashCheckDirs(t *testing.T, o *Overlay, written map[string]map[uint64]bool) {
	t.Helper()
	for j := range crashDirs {
		dir, ok := crashWhere(t, o, fmt.Sprintf("D%d", j))
		if !ok {
			continue
		}
		var names []string
		infos, err := afero.ReadDir(o, dir)
		for _, fi := range infos {
			names = append(names, fi.Name())
		}
		if err != nil || !slices.Equal(names, crashDirFiles) {
			t.Errorf("ReadDir(%s) = %q, %v, want %q", dir, names, err, crashDirFiles)
		}
		for _, c := range crashDirFiles {
			data, err := afero.ReadFile(o, dir+"/"+c)
			if err != nil {
				t.Errorf("ReadFile(%s/%s) = %v", dir, c, err)
				continue
			}
			if err := crashCheckContent(data, fmt.Sprintf("D%d/%s", j, c), written); err != nil {
				t.Errorf("%s/%s: %v", dir, c, err)
			}
		}
	}
}

// crashWhere returns the one name under which name or its other name
// shows, and false (after an error) if it shows under none or both.
func crashWhere(t *testing.T, o *Overlay, name string) (string, bool) {
	t.Helper()
	var found []string
	for _, n := range []string{name, crashOther(name)} {
		_, err := o.Stat(n)
		switch {
		case err == nil:
			found = append(found, n)
		case !errors.Is(err, fs.ErrNotExist):
			t.Errorf("Stat(%s) = %v", n, err)
		}
	}
	if len(found) != 1 {
		t.Errorf("%s shows under %q, want exactly one of %s and %s: lost or duplicated", name, found, name, crashOther(name))
		return "", false
	}
	return found[0], true
}

// TestCrashChild is the child process of the crash tests; it does nothing
// unless started by one.
func TestCrashChild(t *testing.T) {
	js := os.Getenv(crashChildEnv)
	if js == "" {
		t.Skip("the child process of TestCrashRecovery")
	}
	var spec crashSpec
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		t.Fatal(err)
	}
	o, err := crashLayers(spec)
	if err != nil {
		t.Fatal(err)
	}
	log, err := os.OpenFile(spec.Log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	c := &crashChild{o: o, log: log, r: rand.New(rand.NewPCG(spec.Seed, 1))}
	fmt.Print(crashReady)
	if spec.Dirs {
		for j := range crashDirs { // copy each merged directory while it is big
			dir := c.current(fmt.Sprintf("D%d", j))
			if err := c.o.Rename(dir, crashOther(dir)); err != nil {
				t.Fatal(err)
			}
		}
		fmt.Print(crashRenamed)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if spec.Dirs {
			err = c.dirStep()
		} else {
			err = c.fileStep()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// crashChild is the state of the child's loop.
type crashChild struct {
	o   *Overlay
	log *os.File
	r   *rand.Rand
}

// current returns the name that name or its other name shows under now.
func (c *crashChild) current(name string) string {
	if _, err := c.o.Stat(name); err == nil {
		return name
	}
	return crashOther(name)
}

// fileStep does one operation on a random file: a copy-up by Chmod, by
// an open for writing or by Chtimes, an atomic replacement by a new
// version, or a rename to its other name.
func (c *crashChild) fileStep() error {
	id := fmt.Sprintf("f%02d", c.r.IntN(crashFiles))
	name := c.current(id)
	switch c.r.IntN(5) {
	case 0:
		return c.o.Chmod(name, fs.FileMode(0o600|c.r.IntN(2)*0o44))
	case 1:
		f, err := c.o.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		return f.Close()
	case 2:
		now := time.Now()
		return c.o.Chtimes(name, now, now)
	case 3:
		return c.replace(id, name)
	}
	return c.o.Rename(name, crashOther(name))
}

// dirStep does one operation in or on a random directory: a copy-up or a
// replacement of one of its files, or a rename of the directory.
func (c *crashChild) dirStep() error {
	j := c.r.IntN(crashDirs)
	dir := c.current(fmt.Sprintf("D%d", j))
	file := crashDirFiles[c.r.IntN(len(crashDirFiles))]
	switch c.r.IntN(3) {
	case 0:
		return c.o.Chmod(dir+"/"+file, 0o600)
	case 1:
		return c.replace(fmt.Sprintf("D%d/%s", j, file), dir+"/"+file)
	}
	return c.o.Rename(dir, crashOther(dir))
}

// replace writes a new version of id to a temporary name, logging it
// first, and renames it over name.
func (c *crashChild) replace(id, name string) error {
	ver := c.r.Uint64()>>1 + 1
	if _, err := fmt.Fprintf(c.log, "%s %d\n", id, ver); err != nil {
		return err
	}
	tmp := "t-" + strings.ReplaceAll(id, "/", "-")
	if err := afero.WriteFile(c.o, tmp, crashContent(id, ver), 0o644); err != nil {
		return err
	}
	return c.o.Rename(tmp, name)
}

// TestCrashPoints simulates a crash at every call each reliability case
// makes to the upper: from the k-th call on, the upper fails every call,
// so it keeps exactly what a crash at that call would leave. A new overlay
// over it must show the state before or after the operation, with the
// work directory emptied.
func TestCrashPoints(t *testing.T) {
	for _, c := range relCases {
		t.Run(c.name, func(t *testing.T) {
			if bug := crashKnownBugs[c.name]; bug != "" && os.Getenv("OVERLAY_KNOWN_BUGS") == "" {
				t.Skip("known bug: " + bug)
			}
			before, after := relReference(t, c)
			for k := 1; !t.Failed(); k++ {
				if !crashAt(t, c, k, before, after) {
					return
				}
			}
		})
	}
}

// crashKnownBugs lists the reliability cases that a crash can break.
var crashKnownBugs = map[string]string{}

// crashAt runs c with the upper frozen from its k-th call on and checks
// the state a new overlay finds. It reports whether the freeze came before
// the operation ended.
func crashAt(t *testing.T, c relCase, k int, before, after overlaytest.Tree) bool {
	t.Helper()
	env := c.newEnv(t)
	o := env.overlay(t)
	c.runSetup(t, o)
	env.faults.Arm(overlaytest.Fault{Op: overlaytest.OpAny, N: k, Persist: true})
	_ = c.op(o) // the simulated crash makes it fail; only the upper it leaves counts
	if env.faults.Fired() == 0 {
		return false
	}
	o2, err := New(env.raw, env.lowers)
	if err != nil {
		t.Fatalf("crash at call %d: New = %v", k, err)
	}
	got := relTree(t, o2)
	if relWhich(got, before, after) == "" {
		t.Errorf("crash at call %d: the merged view is neither the old nor the new state:\nvs old:\n%svs new:\n%s",
			k, overlaytest.Diff(before, got), overlaytest.Diff(after, got))
	}
	left, err := afero.ReadDir(env.raw, layer{fs: env.raw, rooted: true}.path(workDir))
	if err != nil || len(left) != 0 {
		t.Errorf("crash at call %d: work directory after New holds %d names (%v), want none", k, len(left), err)
	}
	return true
}
