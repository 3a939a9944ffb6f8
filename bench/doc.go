// Package bench holds the benchmarks of github.com/stackfs/overlay against
// its peers. It is a module of its own, so that the peers it measures never
// become dependencies of the library.
//
// Every workload runs over the same layer trees, built once per kind of
// layer ("mem" for afero MemMapFs, "disk" for host directories) and number of
// lowers N, and over these implementations, each a sub-benchmark named
// impl=NAME so that benchstat can compare them:
//
//   - floor: one plain afero.Fs that holds the merged result, the cost of the
//     operation with no layering at all;
//   - overlay: this library;
//   - cow: afero.CopyOnWriteFs chained N deep, with a fresh writable layer on
//     top;
//   - bep: github.com/bep/overlayfs over the same layers, its first (writable)
//     file system being the upper;
//   - kernel: the Linux overlayfs mounted over the disk layers, reached through
//     afero.NewBasePathFs(afero.NewOsFs(), mountpoint); root only.
//
// Run them with ./run.sh, which also summarises them with benchstat and with
// the ratios program in cmd/ratios. RESULTS.md holds one full run.
package bench
