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
// Some workloads also measure references, which show what bounds the
// overlay there: iocopy (copy-up: io.Copy between the two layers), upper
// (Readdir: the upper's own copy of the directory; Create: a careful
// create on a plain layer), copy (Readdir: one copy of a listing that
// long) and layers (the first listing: each layer's copy read alone).
//
// Run them with ./run.sh, which also summarises them with benchstat and with
// the ratios program in cmd/ratios. RESULTS.md holds the full runs.
package bench
