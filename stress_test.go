package overlay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay/overlaytest"
)

// The stress tests run many goroutines on overlapping names for a bounded
// number of iterations, then check invariants. A watchdog fails a test
// that does not finish, with every goroutine's stack: it detects
// deadlocks, it does not measure speed.

// stressLimit is how long a stress test may run before the watchdog calls
// it a deadlock.
const stressLimit = 60 * time.Second

// stressWatch waits for done, and fails the test with a dump of every
// goroutine if it is not closed within stressLimit (or before the test
// binary's own deadline).
func stressWatch(t *testing.T, done <-chan struct{}) {
	t.Helper()
	limit := stressLimit
	if dl, ok := t.Deadline(); ok {
		limit = min(limit, max(time.Until(dl)-5*time.Second, time.Second))
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		buf := make([]byte, 8<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("still running after %v: a deadlock? goroutines:\n%s", limit, buf)
	}
}

// stressErrs collects the failures of worker goroutines, which must not
// call t.Errorf: a watchdog failure may have ended the test already.
type stressErrs struct {
	mu   sync.Mutex
	errs []string
}

// add records a failure.
func (s *stressErrs) add(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) < 20 {
		s.errs = append(s.errs, fmt.Sprintf(format, args...))
	}
}

// report fails t with the recorded failures.
func (s *stressErrs) report(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.errs {
		t.Error(e)
	}
}

// stressRun runs work(g) on n goroutines, released together, and waits
// for them under the watchdog.
func stressRun(t *testing.T, n int, work func(g int)) {
	t.Helper()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() {
			<-start
			work(g)
		})
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	close(start)
	stressWatch(t, done)
}

// stressExpected reports whether err is an error that racing operations on
// shared names may legitimately get.
func stressExpected(err error) bool {
	for _, e := range []error{syscall.ENOENT, syscall.EEXIST, syscall.ENOTEMPTY, syscall.ENOTDIR, syscall.EISDIR, syscall.EINVAL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// stressCheckErr records err unless it is nil or, for an operation on
// shared names, expected; and records any error that is not an
// *fs.PathError or *os.LinkError.
func stressCheckErr(errs *stressErrs, op string, err error, shared bool) {
	if err == nil {
		return
	}
	var pe *fs.PathError
	var le *os.LinkError
	if !errors.As(err, &pe) && !errors.As(err, &le) {
		errs.add("%s: %T %v, want *fs.PathError or *os.LinkError", op, err, err)
	}
	if !shared || !stressExpected(err) {
		errs.add("%s: %v", op, err)
	}
}

// stressCheckListing records a listing that is unsorted, names one entry
// twice or shows a reserved name.
func stressCheckListing(errs *stressErrs, dir string, names []string) {
	if !slices.IsSorted(names) {
		errs.add("listing of %s is not sorted: %q", dir, names)
	}
	if i := slices.IndexFunc(names, func(n string) bool { return strings.HasPrefix(n, whiteoutPrefix) }); i >= 0 {
		errs.add("listing of %s shows %q", dir, names[i])
	}
	if len(slices.Compact(slices.Clone(names))) != len(names) {
		errs.add("listing of %s names an entry twice: %q", dir, names)
	}
}

// stressLower is the lower of the mixed test: shared files and
// directories, some merged with a second layer.
func stressLowers() []afero.Fs {
	top, bottom := fstest.MapFS{}, fstest.MapFS{}
	for i := range 8 {
		top[fmt.Sprintf("shared/l%d", i)] = &fstest.MapFile{Data: []byte(strings.Repeat("l", 1000*i)), Mode: 0o644}
		bottom[fmt.Sprintf("shared/d%d/b", i)] = &fstest.MapFile{Data: []byte("b"), Mode: 0o644}
	}
	for g := range 16 {
		top[fmt.Sprintf("own/g%02d/f0", g)] = &fstest.MapFile{Data: []byte("lower"), Mode: 0o644}
	}
	return []afero.Fs{afero.FromIOFS{FS: top}, afero.FromIOFS{FS: bottom}}
}

// stressShared are the names the goroutines of the mixed test fight over.
var stressShared = []string{"shared/l0", "shared/l1", "shared/l2", "shared/l3", "shared/n0", "shared/n1",
	"shared/d0", "shared/d1", "shared/d2", "shared/d0/b", "shared/d1/x", "shared/n0/y"}

// stressUppers are the uppers the stress tests run on: MemMapFs, whose
// FileInfo values are live views that change when the file is renamed
// (listings once showed work-directory names through them, fixed in
// 7db443e), and a disk directory, whose FileInfo values are snapshots.
var stressUppers = []struct {
	name string
	new  func(t *testing.T) afero.Fs
}{
	{"MemMapFs", func(*testing.T) afero.Fs { return afero.NewMemMapFs() }},
	{"disk", func(t *testing.T) afero.Fs { return afero.NewBasePathFs(afero.NewOsFs(), t.TempDir()) }},
}

// stressEachUpper runs test as a subtest on each of stressUppers.
func stressEachUpper(t *testing.T, test func(t *testing.T, upper afero.Fs)) {
	for _, u := range stressUppers {
		t.Run(u.name, func(t *testing.T) { test(t, u.new(t)) })
	}
}

func TestStressMixedOperations(t *testing.T) {
	stressEachUpper(t, stressMixed)
}

// stressMixed is TestStressMixedOperations on one upper.
func stressMixed(t *testing.T, upper afero.Fs) {
	const goroutines, iterations = 16, 300
	lowers := stressLowers()
	o, err := New(upper, lowers)
	if err != nil {
		t.Fatal(err)
	}
	var errs stressErrs
	last := make([]map[string]string, goroutines) // each goroutine's own files and their content
	stressRun(t, goroutines, func(g int) {
		last[g] = stressWorker(o, g, iterations, &errs)
	})
	errs.report(t)
	if t.Failed() {
		return
	}
	for g, files := range last {
		for name, want := range files {
			got, err := afero.ReadFile(o, name)
			if want == "" {
				if !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("ReadFile(%s) = %q, %v, want ENOENT: goroutine %d removed it", name, got, err, g)
				}
			} else if err != nil || string(got) != want {
				t.Errorf("ReadFile(%s) = %q, %v, want %q, goroutine %d's last write", name, got, err, want, g)
			}
		}
	}
	tree := relTree(t, o)
	o2, err := New(upper, lowers)
	if err != nil {
		t.Fatal(err)
	}
	if d := overlaytest.Diff(tree, relTree(t, o2)); d != "" {
		t.Errorf("a new overlay over the same upper shows another tree:\n%s", d)
	}
}

// stressWorker is goroutine g of the mixed test. It returns its own files
// and their last content ("" for removed).
func stressWorker(o *Overlay, g, iterations int, errs *stressErrs) map[string]string {
	r := rand.New(rand.NewPCG(uint64(g), 7))
	own := make(map[string]string)
	dir := fmt.Sprintf("own/g%02d", g)
	own[dir+"/f0"] = "lower"
	for i := range iterations {
		name := fmt.Sprintf("%s/f%d", dir, r.IntN(4))
		switch r.IntN(10) {
		case 0, 1:
			data := fmt.Sprintf("g%d i%d", g, i)
			stressCheckErr(errs, "write own", afero.WriteFile(o, name, []byte(data), 0o644), false)
			own[name] = data
		case 2:
			if own[name] != "" {
				stressCheckErr(errs, "remove own", o.Remove(name), false)
				own[name] = ""
			}
		case 3:
			to := fmt.Sprintf("%s/f%d", dir, r.IntN(4))
			if own[name] != "" && to != name {
				stressCheckErr(errs, "rename own", o.Rename(name, to), false)
				own[to], own[name] = own[name], ""
			}
		default:
			stressShared1(o, r, errs)
		}
	}
	return own
}

// stressShared1 does one random operation on the shared names.
func stressShared1(o *Overlay, r *rand.Rand, errs *stressErrs) {
	a, b := stressShared[r.IntN(len(stressShared))], stressShared[r.IntN(len(stressShared))]
	var err error
	switch r.IntN(11) {
	case 0:
		err = afero.WriteFile(o, a, []byte("shared"), 0o644)
	case 1:
		err = o.Remove(a)
	case 2:
		err = o.RemoveAll(a)
	case 3:
		err = o.Rename(a, b)
	case 4:
		err = o.Mkdir(a, 0o755)
	case 5:
		err = o.Chmod(a, 0o640)
	case 6:
		now := time.Now()
		err = o.Chtimes(a, now, now)
	case 7:
		_, err = afero.ReadFile(o, a)
		if errors.Is(err, syscall.EISDIR) {
			err = nil
		}
	case 8:
		var f afero.File
		if f, err = o.OpenFile(a, os.O_RDWR, 0); err == nil {
			_, err = f.WriteAt([]byte("w"), 0)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	default:
		for _, dir := range []string{".", "shared", parentOf(a)} {
			names, err := stressList(o, dir, r.IntN(4))
			stressCheckErr(errs, "list "+dir, err, true)
			stressCheckListing(errs, dir, names)
		}
		return
	}
	stressCheckErr(errs, "shared op", err, true)
}

// stressList lists dir in pages of n (all at once if n is 0).
func stressList(o *Overlay, dir string, n int) ([]string, error) {
	f, err := o.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close() // best effort: only read
	var names []string
	for {
		page, err := f.Readdirnames(n)
		names = append(names, page...)
		switch {
		case n > 0 && err == io.EOF:
			return names, nil
		case err != nil:
			return names, err
		case n <= 0:
			return names, nil
		}
	}
}

func TestStressCopyUpSameFile(t *testing.T) {
	const goroutines, size = 32, 8 << 20
	region := size / goroutines
	data := bytes.Repeat([]byte{'.'}, size)
	lower := afero.FromIOFS{FS: fstest.MapFS{"big": {Data: data, Mode: 0o644}}}
	upper := afero.NewMemMapFs()
	o, err := New(upper, []afero.Fs{lower})
	if err != nil {
		t.Fatal(err)
	}
	var errs stressErrs
	mark := func(g int) []byte { return bytes.Repeat([]byte{byte('A' + g%26)}, 100) }
	stressRun(t, goroutines, func(g int) {
		f, err := o.OpenFile("big", os.O_RDWR, 0)
		if err != nil {
			errs.add("goroutine %d: OpenFile = %v", g, err)
			return
		}
		if _, err := f.WriteAt(mark(g), int64(g*region)); err != nil {
			errs.add("goroutine %d: WriteAt = %v", g, err)
		}
		if err := f.Close(); err != nil {
			errs.add("goroutine %d: Close = %v", g, err)
		}
	})
	errs.report(t)
	got, err := afero.ReadFile(o, "big")
	if err != nil || len(got) != size {
		t.Fatalf("ReadFile(big) = %d bytes, %v, want %d", len(got), err, size)
	}
	want := slices.Clone(data)
	for g := range goroutines {
		copy(want[g*region:], mark(g))
	}
	for g := range goroutines {
		if p := got[g*region : (g+1)*region]; !bytes.Equal(p, want[g*region:(g+1)*region]) {
			t.Errorf("region %d = %q…, want goroutine %d's write and the lower bytes: a second copy-up lost it", g, p[:110], g)
		}
	}
	names, err := afero.ReadDir(upper, "/")
	if err != nil || len(names) != 2 {
		t.Errorf("upper root holds %d names (%v), want big and the work directory", len(names), err)
	}
	if left, err := afero.ReadDir(upper, "/"+workDir); err != nil || len(left) != 0 {
		t.Errorf("work directory holds %d names (%v), want none: a copy was left behind", len(left), err)
	}
}

func TestStressListingDuringChurn(t *testing.T) {
	stressEachUpper(t, stressListing)
}

// stressListing is TestStressListingDuringChurn on one upper.
func stressListing(t *testing.T, upper afero.Fs) {
	lower := fstest.MapFS{}
	universe := map[string]bool{}
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "sub"} {
		universe[n], universe[n+"2"], universe["new-"+n] = true, true, true
		lower["churn/"+n] = &fstest.MapFile{Data: []byte(n), Mode: 0o644}
	}
	delete(lower, "churn/sub")
	lower["churn/sub/x"] = &fstest.MapFile{Data: []byte("x"), Mode: 0o644}
	o, err := New(upper, []afero.Fs{afero.FromIOFS{FS: lower}})
	if err != nil {
		t.Fatal(err)
	}
	var errs stressErrs
	var writers sync.WaitGroup
	writers.Add(4)
	listings := 0
	stressRun(t, 5, func(g int) {
		if g == 4 {
			listings = stressListUntil(o, &writers, universe, &errs)
			return
		}
		defer writers.Done()
		stressChurn(o, g, &errs)
	})
	errs.report(t)
	if listings == 0 {
		t.Error("the reader never listed the directory")
	}
}

// stressChurn creates, removes and renames names in churn, lower ones
// included, so that whiteouts come and go.
func stressChurn(o *Overlay, g int, errs *stressErrs) {
	r := rand.New(rand.NewPCG(uint64(g), 11))
	names := []string{"a", "b", "c", "d", "e", "f", "sub"}
	for range 400 {
		n := "churn/" + names[r.IntN(len(names))]
		var err error
		switch r.IntN(6) {
		case 0:
			err = o.Remove(n)
		case 1:
			err = o.RemoveAll(n)
		case 2:
			err = afero.WriteFile(o, n, []byte("upper"), 0o644)
		case 3:
			err = o.Mkdir(n, 0o755)
		case 4:
			err = o.Rename(n, n+"2")
		default:
			err = o.Rename(n+"2", "churn/new-"+names[r.IntN(len(names))])
		}
		stressCheckErr(errs, "churn", err, true)
	}
}

// stressListUntil lists churn until the writers are done, in pages and
// whole, checking every listing. It returns how many listings it made.
func stressListUntil(o *Overlay, writers *sync.WaitGroup, universe map[string]bool, errs *stressErrs) int {
	done := make(chan struct{})
	go func() {
		writers.Wait()
		close(done)
	}()
	for n := 0; ; n++ {
		select {
		case <-done:
			return n
		default:
		}
		names, err := stressList(o, "churn", n%5)
		stressCheckErr(errs, "list churn", err, false)
		stressCheckListing(errs, "churn", names)
		for _, name := range names {
			if !universe[name] {
				errs.add("listing of churn shows %q, which no operation makes", name)
			}
		}
	}
}

// TestStressCommitWithWriters commits again and again while goroutines
// append to files they hold open, and others churn the shared names. Every
// line written must land once, in order, in the merged view; each committed
// layer must hold what it held when its Commit returned, and a prefix of
// each log.
func TestStressCommitWithWriters(t *testing.T) {
	for _, u := range stressUppers {
		t.Run(u.name, func(t *testing.T) { stressCommits(t, func() afero.Fs { return u.new(t) }) })
	}
}

// stressCommits is TestStressCommitWithWriters over uppers made by newUpper.
func stressCommits(t *testing.T, newUpper func() afero.Fs) {
	const writers, churners, lines, commits = 6, 2, 200, 8
	o, err := New(newUpper(), stressLowers())
	if err != nil {
		t.Fatal(err)
	}
	var (
		errs      stressErrs
		committed []afero.Fs
		snapshots []map[string]string
		want      = make([]string, writers)
		finished  atomic.Bool // whether the commits are done
	)
	stressRun(t, writers+churners+1, func(g int) {
		r := rand.New(rand.NewPCG(uint64(g), 11))
		switch {
		case g < writers:
			want[g] = stressAppendLog(o, g, lines, &finished, &errs)
		case g < writers+churners:
			for range lines {
				stressShared1(o, r, &errs)
			}
		default:
			defer finished.Store(true)
			for range commits {
				old := o.layers[0].fs
				if err := o.Commit(newUpper()); err != nil {
					errs.add("Commit: %v", err)
					return
				}
				committed, snapshots = append(committed, old), append(snapshots, layerFiles(old, &errs))
				time.Sleep(time.Duration(r.IntN(500)) * time.Microsecond)
			}
		}
	})
	errs.report(t)
	for g, w := range want {
		name := stressLogName(g)
		if got, err := afero.ReadFile(o, name); err != nil || string(got) != w {
			t.Errorf("%s holds %d bytes, %v; want the %d written", name, len(got), err, len(w))
		}
		for i, snap := range snapshots {
			if got := snap["/"+name]; !strings.HasPrefix(w, got) {
				t.Errorf("committed layer %d: %s holds %q, not a prefix of what was written", i, name, got)
			}
		}
	}
	for i, l := range committed {
		if got := layerFiles(l, &errs); !maps.Equal(got, snapshots[i]) {
			t.Errorf("committed layer %d changed after its Commit", i)
		}
	}
	errs.report(t)
}

// stressLogName is the file goroutine g of the commit test appends to.
func stressLogName(g int) string { return fmt.Sprintf("own/g%02d/log", g) }

// stressAppendLog appends lines to goroutine g's log through one handle,
// at least n and until finished, and returns what it wrote.
func stressAppendLog(o *Overlay, g, n int, finished *atomic.Bool, errs *stressErrs) string {
	f, err := o.OpenFile(stressLogName(g), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		errs.add("open log %d: %v", g, err)
		return ""
	}
	var all strings.Builder
	for i := 0; i < n || !finished.Load(); i++ {
		line := fmt.Sprintf("g%d line %d\n", g, i)
		if _, err := f.Write([]byte(line)); err != nil {
			errs.add("log %d line %d: %v", g, i, err)
			break
		}
		all.WriteString(line)
	}
	if err := f.Close(); err != nil {
		errs.add("close log %d: %v", g, err)
	}
	return all.String()
}

// layerFiles returns every regular file of the layer fsys and its content.
func layerFiles(fsys afero.Fs, errs *stressErrs) map[string]string {
	files := make(map[string]string)
	err := afero.Walk(fsys, "/", func(p string, info fs.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return err
		}
		data, err := afero.ReadFile(fsys, p)
		files[p] = string(data)
		return err
	})
	if err != nil {
		errs.add("reading a committed layer: %v", err)
	}
	return files
}
