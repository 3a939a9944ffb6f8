#!/usr/bin/env bash
# Profiles the overlay implementation in each workload, one benchmark leaf at
# a time, and writes what dominates: out/prof/NAME.cpu and NAME.mem (pprof
# profiles) and NAME.txt (the top functions by flat and by cumulative CPU
# time, and the top allocation sites by objects and by bytes).
#
#   cd bench && ./profile.sh            # every workload below
#   cd bench && ./profile.sh stat-mem   # the named ones
#
# Each profile runs for PROFTIME (default 3s).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p out/prof

PROFTIME=${PROFTIME:-3s}
# name|benchmark regexp|benchtime
profiles=(
	"stat-mem|^BenchmarkStat\$/fs=mem/N=64/impl=overlay\$|$PROFTIME"
	"stat-disk|^BenchmarkStat\$/fs=disk/N=64/impl=overlay\$|$PROFTIME"
	"lstat-mem|^BenchmarkLstat\$/fs=mem/N=64/impl=overlay\$|$PROFTIME"
	"missing-mem|^BenchmarkStatMissing\$/fs=mem/N=64/impl=overlay\$|$PROFTIME"
	"missing-disk|^BenchmarkStatMissing\$/fs=disk/N=64/impl=overlay\$|$PROFTIME"
	"open-mem|^BenchmarkOpenRead4K\$/fs=mem/N=64/impl=overlay\$|$PROFTIME"
	"open-disk|^BenchmarkOpenRead4K\$/fs=disk/N=64/impl=overlay\$|$PROFTIME"
	"readdir-full-mem|^BenchmarkReaddir\$/fs=mem/N=8/size=100k/mode=full/impl=overlay\$|$PROFTIME"
	"readdir-full-disk|^BenchmarkReaddir\$/fs=disk/N=8/size=100k/mode=full/impl=overlay\$|$PROFTIME"
	"readdir-chunked-mem|^BenchmarkReaddir\$/fs=mem/N=8/size=100k/mode=chunked/impl=overlay\$|$PROFTIME"
	"readdir-chunked-disk|^BenchmarkReaddir\$/fs=disk/N=8/size=100k/mode=chunked/impl=overlay\$|$PROFTIME"
	"readdir-cold-mem|^BenchmarkReaddir\$/fs=mem/N=8/size=100k/mode=cold/impl=overlay\$|$PROFTIME"
	"readdir-cold-disk|^BenchmarkReaddir\$/fs=disk/N=8/size=100k/mode=cold/impl=overlay\$|$PROFTIME"
	"copyup-mem|^BenchmarkCopyUp\$/fs=mem/N=64/size=64MiB/impl=overlay\$|$PROFTIME"
	"copyup-disk|^BenchmarkCopyUp\$/fs=disk/N=64/size=64MiB/impl=overlay\$|$PROFTIME"
	"create-mem|^BenchmarkCreate10k\$/fs=mem/N=64/impl=overlay\$|$PROFTIME"
	"create-disk|^BenchmarkCreate10k\$/fs=disk/N=64/impl=overlay\$|$PROFTIME"
	"parallel-mem|^BenchmarkStatParallel\$/fs=mem/N=64/impl=overlay/g=8\$|$PROFTIME"
	"parallel-disk|^BenchmarkStatParallel\$/fs=disk/N=64/impl=overlay/g=8\$|$PROFTIME"
)

# Build against the snapshot that run.sh took, if any, so that the profiles
# are of the code that run.sh measured.
if [ -f out/bench.mod ] && [ -d out/lib ]; then
	export GOFLAGS="${GOFLAGS:-} -mod=mod -modfile=$PWD/out/bench.mod"
	echo "profiling the library snapshot in out/lib" >&2
fi
# The benchmarks build their layer trees in the same process: leave those
# samples out of the reports.
ignore='bench\..*(buildTree|buildReaddir|ensureReaddir|addBigFile|pattern|getTree)'
report() {
	local prefix=$1
	grep '^Benchmark' "$prefix.bench.txt" || true
	echo "--- CPU, by flat time (layer tree building left out)"
	go tool pprof -top -nodecount=25 -ignore="$ignore" out/bench.test "$prefix.cpu" 2>/dev/null | tail -n +5
	echo "--- CPU, by cumulative time"
	go tool pprof -top -cum -nodecount=35 -ignore="$ignore" out/bench.test "$prefix.cpu" 2>/dev/null | tail -n +5
	echo "--- allocations, by objects"
	go tool pprof -top -sample_index=alloc_objects -nodecount=20 -ignore="$ignore" out/bench.test "$prefix.mem" 2>/dev/null | tail -n +5
	echo "--- allocations, by bytes"
	go tool pprof -top -sample_index=alloc_space -nodecount=12 -ignore="$ignore" out/bench.test "$prefix.mem" 2>/dev/null | tail -n +5
}

# REPORT_ONLY=1 rewrites the reports from the profiles already taken.
if [ -z "${REPORT_ONLY:-}" ]; then
	go test -c -o out/bench.test .
fi
for p in "${profiles[@]}"; do
	IFS='|' read -r name re benchtime <<<"$p"
	if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$name"; then
		continue
	fi
	prefix=out/prof/$name
	if [ -z "${REPORT_ONLY:-}" ]; then
		echo "== $name: $re" >&2
		out/bench.test -test.run '^$' -test.bench "$re" -test.benchtime "$benchtime" -test.timeout 0 \
			-test.cpuprofile "$prefix.cpu" -test.memprofile "$prefix.mem" -test.memprofilerate 4096 >"$prefix.bench.txt"
		grep '^Benchmark' "$prefix.bench.txt" >&2 || true
	fi
	[ -f "$prefix.cpu" ] && report "$prefix" >"$prefix.txt"
done
echo "wrote out/prof/*.txt" >&2
