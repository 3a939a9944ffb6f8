#!/usr/bin/env bash
# Runs the overlay benchmarks against floor, cow, bep and the kernel, then
# summarises them with benchstat and with cmd/ratios.
#
#   cd bench && ./run.sh
#
# With the defaults it takes 7 to 16 minutes on a 2-core machine, depending on
# the load and on how fast the library is (462 s of benchmarks for the latest
# run in RESULTS.md). Settings, from the environment:
#   COUNT=5           samples per benchmark (go test -count)
#   BENCHTIME=100ms   go test -benchtime; operations slower than this run
#                     once per sample
#   BENCH=.           go test -bench regexp, e.g. 'Stat$|Readdir'
#   ROUNDS=1          with ROUNDS=R>1, R runs of -count=1 instead of one run
#                     of -count=$COUNT: each implementation's samples are then
#                     spread over the whole run (the layer trees are rebuilt
#                     for every round)
#   OVERLAY_BENCH_BIG=1   adds the 1 GiB copy-up (slow; several GiB of RAM)
#   OVERLAY_BENCH_SLOW=1  adds the quadratic peer cases (minutes each)
#   OVERLAY_NO_KERNEL=1   skips the kernel overlay even as root
#   OVERLAY_BENCH_DIR=D   puts the disk layers in a fresh directory under D
#                         instead of a tmpfs: OVERLAY_BENCH_DIR=/var/tmp
#                         BENCH=/fs=disk/ measures them on ext4 where /var/tmp
#                         is on ext4
#   OVERLAY_BENCH_VOLATILE=1  copy-ups skip their sync: overlay.WithVolatile,
#                         and the kernel overlay mounted with volatile
# As root the disk layers live on a tmpfs that the benchmarks mount, and the
# kernel overlay is measured; otherwise they live in a temporary directory.
#
# Output: out/raw.txt (raw go test output, for benchstat), out/benchstat.txt
# (benchstat -col /impl) and out/ratios.md (the Markdown tables). The library
# is built from a snapshot, out/lib, which profile.sh reuses.
set -euo pipefail
cd "$(dirname "$0")"

COUNT=${COUNT:-5}
BENCHTIME=${BENCHTIME:-100ms}
BENCH=${BENCH:-.}
ROUNDS=${ROUNDS:-1}

mkdir -p out
raw=out/raw.txt

# Snapshot the library (the root package's files as they are now, committed
# or not) and build against the snapshot, so that the profiles that
# profile.sh takes afterwards measure the same code as this run, whatever
# lands in the working tree meanwhile.
rm -rf out/lib
mkdir -p out/lib
cp ../go.mod ../go.sum ../*.go out/lib/
sed "s|=> \.\./\$|=> $PWD/out/lib|" go.mod >out/bench.mod
cp go.sum out/bench.sum
export GOFLAGS="${GOFLAGS:-} -mod=mod -modfile=$PWD/out/bench.mod"

cmd="go test -run '^\$' -bench '$BENCH' -benchtime=$BENCHTIME -count=$COUNT -timeout=0 ."
if [ "$ROUNDS" -gt 1 ]; then
	cmd="$ROUNDS x: go test -run '^\$' -bench '$BENCH' -benchtime=$BENCHTIME -count=1 -timeout=0 ."
fi
{
	echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "nproc: $(nproc)"
	echo "cpu-model: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "kernel: $(uname -sr)"
	echo "go: $(go env GOVERSION)"
	echo "overlay-commit: $(git -C .. rev-parse --short HEAD 2>/dev/null || echo unknown) ($(git -C .. status --porcelain -- . ':!bench' 2>/dev/null | wc -l) uncommitted paths outside bench/; snapshot in out/lib)"
	echo "command: $cmd"
} >"$raw"

start=$(date +%s)
if [ "$ROUNDS" -gt 1 ]; then
	for r in $(seq "$ROUNDS"); do
		echo "== round $r of $ROUNDS" >&2
		go test -run '^$' -bench "$BENCH" -benchtime="$BENCHTIME" -count=1 -timeout=0 . | tee -a "$raw"
	done
else
	go test -run '^$' -bench "$BENCH" -benchtime="$BENCHTIME" -count="$COUNT" -timeout=0 . | tee -a "$raw"
fi
elapsed=$(($(date +%s) - start))
echo "elapsed: ${elapsed}s" | tee -a "$raw"

GOFLAGS= go run golang.org/x/perf/cmd/benchstat@latest -col /impl "$raw" >out/benchstat.txt
go run ./cmd/ratios "$raw" >out/ratios.md
echo "wrote $raw, out/benchstat.txt and out/ratios.md (${elapsed}s of benchmarks)"
