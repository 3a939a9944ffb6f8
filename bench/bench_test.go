package bench

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"testing"

	"github.com/spf13/afero"
	"github.com/stackfs/overlay"
)

// Benchmark names are Benchmark<Workload>/fs=<kind>/N=<lowers>/.../impl=<name>,
// so that `benchstat -col /impl` sets the implementations side by side. The
// implementations are the innermost level: each workload measures them one
// after the other on the same tree, under the same machine load.

// forTrees runs fn as the sub-benchmarks fs=KIND/N=n, for every kind of
// layer and every n in ns, with the tree for that kind and n.
func forTrees(b *testing.B, ns []int, fn func(b *testing.B, t *tree)) {
	for _, kind := range kinds {
		b.Run("fs="+kind, func(b *testing.B) {
			for _, n := range ns {
				b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
					fn(b, getTree(b, kind, n))
				})
			}
		})
	}
}

// forImpls runs fn as the sub-benchmarks impl=NAME, one per implementation,
// skipping the kernel where it cannot be had.
func forImpls(b *testing.B, t *tree, names []string, fn func(b *testing.B, impl string)) {
	for _, impl := range names {
		b.Run("impl="+impl, func(b *testing.B) {
			if impl == implKernel {
				skipNoKernel(b, t)
			}
			fn(b, impl)
		})
	}
}

// statLoop measures stat(name). The name must exist if exists is set, and
// be missing (fs.ErrNotExist) otherwise.
func statLoop(b *testing.B, stat func(string) (fs.FileInfo, error), name string, exists bool) {
	b.Helper()
	check := func(err error) {
		switch {
		case exists && err != nil:
			b.Fatalf("stat %s: %v", name, err)
		case !exists && !errors.Is(err, fs.ErrNotExist):
			b.Fatalf("stat %s: want ErrNotExist, got %v", name, err)
		}
	}
	_, err := stat(name) // warms caches, checks the result
	check(err)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := stat(name); (err == nil) != exists {
			check(err)
		}
	}
}

// lstatOf returns fsys's Lstat, skipping the benchmark if it has none.
func lstatOf(b *testing.B, fsys afero.Fs) func(string) (fs.FileInfo, error) {
	b.Helper()
	ls, ok := fsys.(afero.Lstater)
	if !ok {
		b.Skipf("%T does not implement afero.Lstater", fsys)
	}
	return func(name string) (fs.FileInfo, error) {
		fi, _, err := ls.LstatIfPossible(name)
		return fi, err
	}
}

// BenchmarkStat measures workload 1: Stat of a file that only the bottom
// lower holds, two merged directories down.
func BenchmarkStat(b *testing.B) {
	forTrees(b, lowerCounts, func(b *testing.B, t *tree) {
		forImpls(b, t, impls, func(b *testing.B, impl string) {
			statLoop(b, readFs(b, t, impl).Stat, bottomFile, true)
		})
	})
}

// BenchmarkLstat measures workload 1: Lstat (LstatIfPossible) of the same
// file.
func BenchmarkLstat(b *testing.B) {
	forTrees(b, lowerCounts, func(b *testing.B, t *tree) {
		forImpls(b, t, impls, func(b *testing.B, impl string) {
			statLoop(b, lstatOf(b, readFs(b, t, impl)), bottomFile, true)
		})
	})
}

// BenchmarkStatMissing measures workload 2: Stat of a name that no layer
// holds, in a directory that every layer holds.
func BenchmarkStatMissing(b *testing.B) {
	forTrees(b, lowerCounts, func(b *testing.B, t *tree) {
		forImpls(b, t, impls, func(b *testing.B, impl string) {
			statLoop(b, readFs(b, t, impl).Stat, missingFile, false)
		})
	})
}

// BenchmarkOpenRead4K measures workload 3: Open a file that only the bottom
// lower holds, read its first 4 KiB, Close.
func BenchmarkOpenRead4K(b *testing.B) {
	forTrees(b, lowerCounts, func(b *testing.B, t *tree) {
		forImpls(b, t, impls, func(b *testing.B, impl string) {
			fsys := readFs(b, t, impl)
			buf := make([]byte, 4<<10)
			read := func() error {
				f, err := fsys.Open(bottomFile)
				if err != nil {
					return err
				}
				if _, err := io.ReadFull(f, buf); err != nil {
					f.Close()
					return err
				}
				return f.Close()
			}
			if err := read(); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := read(); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// cannot ends a write benchmark that failed: a peer that cannot do the
// workload is skipped with the reason, anything else is a failure.
func cannot(b *testing.B, impl, what string, err error) {
	b.Helper()
	if impl == implBep {
		b.Skipf("bep/overlayfs cannot %s: %v", what, err)
	}
	b.Fatalf("%s: %v", what, err)
}

// BenchmarkCopyUp measures workload 5: open a file of the bottom lower
// O_RDWR, write one byte, close, each time over a fresh upper (made with the
// timer stopped, and the heap collected). The floor writes its plain copy in
// place; iocopy is the baseline, io.Copy of the file from the bottom lower
// into a fresh upper. The 64 MiB file always runs; the 1 GiB one with
// -bench.big or OVERLAY_BENCH_BIG=1.
func BenchmarkCopyUp(b *testing.B) {
	forTrees(b, lowerCounts, func(b *testing.B, t *tree) {
		for i, s := range copySizes {
			if i > 0 && !big() {
				continue
			}
			b.Run("size="+s.label, func(b *testing.B) {
				if i > 0 {
					drop, err := t.addBigFile(s.label, s.size)
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(drop)
				}
				forImpls(b, t, append(impls, implIOCopy), func(b *testing.B, impl string) {
					copyUpLoop(b, t, impl, copyFile(s.label), s.size)
				})
			})
		}
	})
}

// copyUpLoop is BenchmarkCopyUp's loop for one implementation.
func copyUpLoop(b *testing.B, t *tree, impl, name string, size int64) {
	writeByte := func(fsys afero.Fs) error {
		f, err := fsys.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		if _, err := f.Write([]byte{'x'}); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	if impl != implFloor {
		b.SetBytes(size)
	}
	b.ReportAllocs()
	first := true
	for b.Loop() {
		b.StopTimer()
		var (
			fsys afero.Fs
			up   layerDir
			done = func() {}
			err  error
		)
		switch impl {
		case implFloor:
			fsys = t.floor.fs
		case implIOCopy:
			if up, err = t.freshLayer(); err == nil {
				err = up.mkdir(copyDir)
			}
			done = func() { _ = up.drop() } // best effort: a temporary layer
		default:
			fsys, done, err = writeFs(b, t, impl, nil)
		}
		if err != nil {
			b.Fatal(err)
		}
		// Each sample is one copy of tens of MiB: collect the previous
		// sample's copy now, or whether a collection falls inside the
		// timed copy decides the sample (MemMapFs samples were bimodal,
		// 20 ms or 100-400 ms, for every implementation).
		runtime.GC()
		b.StartTimer()
		if impl == implIOCopy {
			err = ioCopy(t.bottom().fs, up.fs, name)
		} else {
			err = writeByte(fsys)
		}
		b.StopTimer()
		if err != nil {
			done()
			cannot(b, impl, "copy a lower file up on an O_RDWR open", err)
		}
		if first {
			first = false
			if fsys == nil {
				fsys = up.fs
			}
			if fi, err := fsys.Stat(name); err != nil || fi.Size() != size {
				b.Fatalf("after the copy-up: %v, %v; want size %d", fi, err, size)
			}
		}
		done()
		b.StartTimer()
	}
}

// ioCopy copies the file name from src to a new file of the same name in dst.
func ioCopy(src, dst afero.Fs, name string) error {
	in, err := src.Open(name)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := dst.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// createCount is how many files the create workload makes per iteration.
const createCount = 10_000

// BenchmarkCreate10k measures workload 6: create (and close) 10k new files
// in a directory that every lower holds and the upper does not, each
// iteration over a fresh upper (made with the timer stopped). The floor
// creates them in a fresh plain layer that holds the empty directory.
func BenchmarkCreate10k(b *testing.B) {
	names := make([]string, createCount)
	for i := range names {
		names[i] = fmt.Sprintf("%s/n%05d", createDir, i)
	}
	forTrees(b, lowerCounts, func(b *testing.B, t *tree) {
		forImpls(b, t, append(impls, implUpper), func(b *testing.B, impl string) {
			b.ReportAllocs()
			first := true
			for b.Loop() {
				b.StopTimer()
				fsys, done, err := writeFs(b, t, impl, func(l layerDir) error { return l.mkdir(createDir) })
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				for _, name := range names {
					f, err := createIn(fsys, impl, name)
					if err == nil {
						err = f.Close()
					}
					if err != nil {
						b.StopTimer()
						done()
						cannot(b, impl, "create a file in a directory that only the lowers hold", err)
					}
				}
				b.StopTimer()
				if first {
					first = false
					if n, err := listDir(fsys, createDir, 0); err != nil || n != createCount {
						b.Fatalf("after creating %d files: %d listed, %v", createCount, n, err)
					}
				}
				done()
				b.StartTimer()
			}
		})
	})
}

// createIn creates name in fsys as the Create workload does: with Create,
// but for impl upper, the reference, which creates it on a plain layer the
// way a create must that may not clobber a file and gives the mode asked:
// OpenFile with O_EXCL and mode 0666 (MemMapFs's Create gives mode 0).
func createIn(fsys afero.Fs, impl, name string) (afero.File, error) {
	if impl == implUpper {
		return fsys.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
	}
	return fsys.Create(name)
}

// parallelGoroutines is how many goroutines the parallel Stat runs.
const parallelGoroutines = 8

// BenchmarkStatParallel measures workload 7: Stat of the bottom lower's file
// from one goroutine (g=1) and from 8 (g=8, b.RunParallel); ns/op of g=8 is
// wall time per Stat over all goroutines, so serial/parallel ns/op is the
// throughput gain.
func BenchmarkStatParallel(b *testing.B) {
	forTrees(b, lowerCounts, func(b *testing.B, t *tree) {
		forImpls(b, t, impls, func(b *testing.B, impl string) {
			fsys := readFs(b, t, impl)
			if _, err := fsys.Stat(bottomFile); err != nil {
				b.Fatal(err)
			}
			b.Run("g=1", func(b *testing.B) {
				statLoop(b, fsys.Stat, bottomFile, true)
			})
			b.Run(fmt.Sprintf("g=%d", parallelGoroutines), func(b *testing.B) {
				procs := runtime.GOMAXPROCS(0)
				b.SetParallelism((parallelGoroutines + procs - 1) / procs)
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := fsys.Stat(bottomFile); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		})
	})
}

// readdirChunk is the page size of the chunked Readdir.
const readdirChunk = 256

// listDir opens dir, lists it with Readdir(-1) (chunk 0) or with
// Readdir(chunk) until io.EOF, closes it and returns how many entries it
// listed.
func listDir(fsys afero.Fs, dir string, chunk int) (n int, err error) {
	f, err := fsys.Open(dir)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if chunk <= 0 {
		list, err := f.Readdir(-1)
		return len(list), err
	}
	for {
		list, err := f.Readdir(chunk)
		n += len(list)
		switch {
		case err == io.EOF:
			return n, nil
		case err != nil:
			return n, err
		case len(list) == 0:
			return n, errors.New("Readdir returned nothing and no io.EOF")
		}
	}
}

// checkedList is listDir that turns a panic of the implementation into an
// error, so that a peer's bug skips its benchmark rather than ending the run.
func checkedList(fsys afero.Fs, dir string, chunk int) (n int, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return listDir(fsys, dir, chunk)
}

// readdirModes are the ways the Readdir workload lists: whole, in pages,
// and whole on a fresh instance (a new Overlay, a new kernel mount) each
// time, made with the timer stopped, so that nothing is cached from the
// listing before.
var readdirModes = []struct {
	name  string
	chunk int
	cold  bool
}{
	{"full", 0, false},
	{"chunked", readdirChunk, false},
	{"cold", 0, true},
}

// BenchmarkReaddir measures workload 4: the merged listing of one directory
// of 10k or 100k entries over 8 lowers and the upper, read whole
// (Readdir(-1)) or in pages of 256 until io.EOF, Open and Close included.
// The overlay lists OCI whiteouts and the kernel 0:0 character devices; cow
// and bep, which have no whiteouts, list a copy of the directory without
// them, which shows the whited-out names too (10% more entries). Mode cold
// runs only for the overlay and the kernel, the two that keep what they
// listed. Impl upper lists the upper's own copy of the directory, which a
// warm overlay listing reads again where the upper is a host directory;
// impl copy is one copy of a listing as long as the overlay's, the least
// that Readdir(-1) costs.
func BenchmarkReaddir(b *testing.B) {
	forTrees(b, []int{readdirLowers}, func(b *testing.B, t *tree) {
		t.ensureReaddir(b)
		for _, s := range readdirSizes {
			b.Run("size="+s.label, func(b *testing.B) {
				for _, mode := range readdirModes {
					b.Run("mode="+mode.name, func(b *testing.B) {
						forImpls(b, t, append(impls, implUpper, implCopy, implLayers), func(b *testing.B, impl string) {
							if why := quadratic(t, impl, s.size, mode.chunk); why != "" && !slow() {
								b.Skip(why + "; -bench.slow or OVERLAY_BENCH_SLOW=1 runs it")
							}
							switch {
							case (impl == implUpper || impl == implCopy) && mode.name != "full":
								b.Skip("the reference is measured for the full listing only")
							case impl == implLayers && !mode.cold:
								b.Skip("the reference is measured for the first listing only")
							case impl == implCopy:
								copyLoop(b, t, s.label, s.size)
								return
							case impl == implLayers:
								layersLoop(b, t, readdirPath(implOverlay, s.label))
								return
							}
							dir, want := readdirPath(impl, s.label), readdirWant(impl, s.size)
							if mode.cold {
								coldReaddirLoop(b, t, impl, dir, want)
								return
							}
							fsys := readFs(b, t, impl)
							got, err := checkedList(fsys, dir, mode.chunk)
							switch {
							case err != nil && (impl == implBep || impl == implCow):
								b.Skipf("%s cannot list %s in pages of %d: %v", impl, dir, mode.chunk, err)
							case err != nil:
								b.Fatalf("listing %s: %v", dir, err)
							case got != want:
								b.Fatalf("listing %s: %d entries, want %d", dir, got, want)
							}
							b.ReportAllocs()
							for b.Loop() {
								if _, err := listDir(fsys, dir, mode.chunk); err != nil {
									b.Fatal(err)
								}
							}
						})
					})
				}
			})
		}
	})
}

// listingSink keeps copyLoop's copies alive, so that they are made.
var listingSink []fs.FileInfo

// copyLoop measures impl copy: one slices.Clone of the overlay's listing of
// the directory of the given size.
func copyLoop(b *testing.B, t *tree, label string, size int) {
	f, err := readFs(b, t, implOverlay).Open(readdirPath(implOverlay, label))
	if err != nil {
		b.Fatal(err)
	}
	list, err := f.Readdir(-1)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil || len(list) != size {
		b.Fatalf("listing %d entries: %d, %v", size, len(list), err)
	}
	b.ReportAllocs()
	for b.Loop() {
		listingSink = slices.Clone(list)
	}
}

// layersLoop measures impl layers: dir listed whole in the upper and in
// every lower, each with its own Readdir.
func layersLoop(b *testing.B, t *tree, dir string) {
	layers := append([]layerDir{t.upper}, t.lowers...)
	b.ReportAllocs()
	for b.Loop() {
		for _, l := range layers {
			if _, err := listDir(l.fs, dir, 0); err != nil {
				b.Fatalf("listing %s in a layer: %v", dir, err)
			}
		}
	}
}

// coldReaddirLoop lists dir whole, each time on a fresh Overlay or kernel
// mount over the tree's read upper.
func coldReaddirLoop(b *testing.B, t *tree, impl, dir string, want int) {
	if impl != implOverlay && impl != implKernel {
		b.Skipf("%s keeps nothing between listings: mode=full measures it", impl)
	}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		var (
			fsys afero.Fs
			done = func() {}
			err  error
		)
		if impl == implOverlay {
			fsys, err = overlay.New(t.upper.fs, t.lowerFss(), overlayOptions()...)
		} else {
			var mnt string
			if mnt, err = mountKernel(t, t.upper.dir); err == nil {
				fsys = afero.NewBasePathFs(afero.NewOsFs(), mnt)
				done = func() {
					if err := unmountKernel(mnt); err != nil {
						b.Error(err)
					}
				}
			}
		}
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		got, err := listDir(fsys, dir, 0)
		b.StopTimer()
		done()
		if err != nil || got != want {
			b.Fatalf("listing %s: %d entries, %v; want %d", dir, got, err, want)
		}
		b.StartTimer()
	}
}

// quadratic says why a Readdir case is too slow to run by default: the
// peer's cost grows with the square of the directory size, and at 100k
// entries one listing takes tens of seconds or more.
func quadratic(t *tree, impl string, size, chunk int) string {
	switch {
	case size < 100_000:
		return ""
	case impl == implBep:
		return "bep/overlayfs's default DirsMerger compares each name with every name merged so far (quadratic): " +
			"the 10k listing takes seconds, 100k would take about 100 times as long"
	case impl == implFloor && t.kind == kindMem && chunk > 0:
		return "MemMapFs sorts the whole directory again on every Readdir(n) call (quadratic in the number of pages): " +
			"about 20 s per 100k listing"
	}
	return ""
}
