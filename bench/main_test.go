package bench

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/stackfs/overlay"
)

// bigFlag adds the 1 GiB copy-up, which is slow; OVERLAY_BENCH_BIG=1 does too.
var bigFlag = flag.Bool("bench.big", false, "also run the copy-up workload with a 1 GiB file")

// slowFlag adds the cases that take tens of seconds or more per operation
// because a peer's algorithm is quadratic; OVERLAY_BENCH_SLOW=1 does too.
var slowFlag = flag.Bool("bench.slow", false, "also run the quadratic peer cases (bep's 100k Readdir, MemMapFs's chunked 100k Readdir)")

// noKernelEnv, when set, skips the kernel overlay even when running as root.
const noKernelEnv = "OVERLAY_NO_KERNEL"

// diskDirEnv, when set, names a directory to hold the disk layers instead
// of a tmpfs: OVERLAY_BENCH_DIR=/var/tmp measures them on the file system
// that holds /var/tmp (ext4, say), in a fresh directory removed afterwards.
const diskDirEnv = "OVERLAY_BENCH_DIR"

// volatileEnv, set to 1, measures the overlay with overlay.WithVolatile and
// mounts the kernel overlay with its volatile option: then neither syncs a
// copy-up's bytes, which on a tmpfs costs nothing but on ext4 most of the
// copy-up's time.
const volatileEnv = "OVERLAY_BENCH_VOLATILE"

// volatile reports whether copy-ups are measured without their sync.
func volatile() bool { return os.Getenv(volatileEnv) == "1" }

// overlayOptions are the options the benchmarks pass to overlay.New.
func overlayOptions() []overlay.Option {
	if volatile() {
		return []overlay.Option{overlay.WithVolatile()}
	}
	return nil
}

// big reports whether the 1 GiB copy-up was asked for.
func big() bool { return *bigFlag || os.Getenv("OVERLAY_BENCH_BIG") == "1" }

// slow reports whether the quadratic peer cases were asked for.
func slow() bool { return *slowFlag || os.Getenv("OVERLAY_BENCH_SLOW") == "1" }

// diskRoot is the directory that holds every disk layer: a tmpfs that the
// benchmarks mounted when running as root, a plain temporary directory
// otherwise or where OVERLAY_BENCH_DIR asks for one. It is set up by TestMain before any benchmark runs, since a
// benchmark must print nothing while it is measured.
var diskRoot string

// diskNote says why the disk layers are not on a tmpfs.
func diskNote(onTmpfs bool) string {
	switch {
	case !onTmpfs:
		return " (" + diskDirEnv + ")"
	case !canMount():
		return " (not root: no tmpfs, no kernel overlay)"
	}
	return " (the tmpfs mount failed)"
}

// TestMain prepares the disk root when benchmarks are to run, and removes it
// (and every mount under it) afterwards.
func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

// run is TestMain's body, so that its deferred cleanups run before os.Exit.
func run(m *testing.M) int {
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		cleanup, err := setupDiskRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		defer cleanup()
		sync := "synced, as the kernel does by default"
		if volatile() {
			sync = "volatile (" + volatileEnv + "=1): overlay.WithVolatile, kernel mounted with volatile"
		}
		fmt.Printf("copy-up: %s\n", sync)
	}
	return m.Run()
}

// setupDiskRoot creates diskRoot and prints where it is as a configuration
// line ("disk: ..."), which benchstat keeps with the results. The path is
// short on purpose: the kernel limits the overlay mount options, 64 lowers
// included, to one page.
func setupDiskRoot() (func(), error) {
	parent, onTmpfs := "/tmp", true
	if d := os.Getenv(diskDirEnv); d != "" {
		parent, onTmpfs = d, false
	}
	dir, err := os.MkdirTemp(parent, "ob")
	if err != nil {
		return nil, err
	}
	mounted := false
	if onTmpfs && canMount() {
		if err := mountTmpfs(dir); err == nil {
			mounted = true
		} else {
			fmt.Fprintln(os.Stderr, "bench: no tmpfs, using a plain temporary directory:", err)
		}
	}
	if mounted {
		fmt.Printf("disk: tmpfs mounted by the benchmarks at %s\n", dir)
	} else {
		fmt.Printf("disk: temporary directory %s on %s%s\n", dir, fsTypeName(dir), diskNote(onTmpfs))
	}
	diskRoot = dir
	return func() {
		unmountAll()
		if mounted {
			if err := unmount(dir); err != nil {
				fmt.Fprintln(os.Stderr, "bench:", err)
				return
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	}, nil
}
