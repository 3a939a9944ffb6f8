// Command ratios reads the raw output of the bench module's benchmarks
// (go test -bench, any -count) and prints Markdown: one table with the median
// ns/op and allocs/op of every implementation per workload, layer kind and
// number of lowers, with the ratio of each to the floor, and one table that
// checks the library against its performance targets.
//
// Usage:
//
//	go run ./cmd/ratios out/raw.txt
//
// With no file it reads standard input.
package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// implOrder is the column order; implementations not listed follow in the
// order they first appear.
var implOrder = []string{"floor", "overlay", "cow", "bep", "kernel", "iocopy", "upper", "copy", "layers"}

// row identifies one line of the table: a workload (with its extra keys,
// such as size=100k mode=full), a layer kind and a number of lowers.
type row struct {
	workload, fs, n string
}

// samples holds the measurements of one implementation in one row.
type samples struct {
	ns, allocs []float64
}

// results holds everything read, with rows and implementations in the order
// they first appeared.
type results struct {
	rows  []row
	impls []string
	data  map[row]map[string]*samples
}

// procSuffix matches the GOMAXPROCS suffix of a benchmark name.
var procSuffix = regexp.MustCompile(`-\d+$`)

func main() {
	in := io.Reader(os.Stdin)
	if len(os.Args) > 1 {
		f, err := os.Open(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "ratios:", err)
			os.Exit(1)
		}
		defer f.Close()
		in = f
	}
	res, err := parse(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ratios:", err)
		os.Exit(1)
	}
	if len(res.rows) == 0 {
		fmt.Fprintln(os.Stderr, "ratios: no benchmark results in the input")
		os.Exit(1)
	}
	res.printTable(os.Stdout)
	fmt.Println()
	res.printTargets(os.Stdout)
}

// parse reads benchmark result lines, ignoring everything else.
func parse(r io.Reader) (*results, error) {
	res := &results{data: map[row]map[string]*samples{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(fields[1]); err != nil {
			continue
		}
		rw, impl := splitName(procSuffix.ReplaceAllString(fields[0], ""))
		if impl == "" {
			continue
		}
		m := res.data[rw]
		if m == nil {
			m = map[string]*samples{}
			res.data[rw] = m
			res.rows = append(res.rows, rw)
		}
		s := m[impl]
		if s == nil {
			s = &samples{}
			m[impl] = s
			if !slices.Contains(res.impls, impl) {
				res.impls = append(res.impls, impl)
			}
		}
		for i := 2; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			switch fields[i+1] {
			case "ns/op":
				s.ns = append(s.ns, v)
			case "allocs/op":
				s.allocs = append(s.allocs, v)
			}
		}
	}
	sort.SliceStable(res.impls, func(i, j int) bool { return rank(res.impls[i]) < rank(res.impls[j]) })
	return res, sc.Err()
}

// rank orders implementations for the columns.
func rank(impl string) int {
	if i := slices.Index(implOrder, impl); i >= 0 {
		return i
	}
	return len(implOrder)
}

// splitName splits "BenchmarkReaddir/fs=mem/N=8/size=10k/mode=full/impl=bep"
// into its row and implementation.
func splitName(name string) (row, string) {
	parts := strings.Split(name, "/")
	var rw row
	var impl string
	workload := []string{strings.TrimPrefix(parts[0], "Benchmark")}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		switch {
		case !ok:
			workload = append(workload, p)
		case k == "fs":
			rw.fs = v
		case k == "N":
			rw.n = v
		case k == "impl":
			impl = v
		default:
			workload = append(workload, p)
		}
	}
	rw.workload = strings.Join(workload, " ")
	return rw, impl
}

// median returns the median of xs, NaN for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// get returns the median ns/op and allocs/op of impl in rw, and whether
// there are any.
func (res *results) get(rw row, impl string) (ns, allocs float64, ok bool) {
	s := res.data[rw][impl]
	if s == nil || len(s.ns) == 0 {
		return 0, 0, false
	}
	return median(s.ns), median(s.allocs), true
}

// printTable prints the main table.
func (res *results) printTable(w io.Writer) {
	fmt.Fprintln(w, "Median ns/op and allocs/op per implementation; (×r) is the ratio of ns/op to floor's; – is skipped.")
	fmt.Fprintln(w)
	fmt.Fprint(w, "| workload | fs | N |")
	for _, impl := range res.impls {
		fmt.Fprintf(w, " %s |", impl)
	}
	fmt.Fprintln(w)
	fmt.Fprint(w, "|---|---|--:|")
	for range res.impls {
		fmt.Fprint(w, "--:|")
	}
	fmt.Fprintln(w)
	for _, rw := range res.rows {
		floor, _, hasFloor := res.get(rw, "floor")
		fmt.Fprintf(w, "| %s | %s | %s |", rw.workload, rw.fs, rw.n)
		for _, impl := range res.impls {
			ns, allocs, ok := res.get(rw, impl)
			if !ok {
				fmt.Fprint(w, " – |")
				continue
			}
			cell := fmt.Sprintf("%s, %s allocs", fmtNs(ns), fmtCount(allocs))
			if hasFloor && impl != "floor" {
				cell += fmt.Sprintf(" (×%s)", fmtRatio(ns/floor))
			}
			fmt.Fprintf(w, " %s |", cell)
		}
		fmt.Fprintln(w)
	}
}

// fmtNs formats a duration in nanoseconds with three significant digits.
func fmtNs(ns float64) string {
	switch {
	case ns < 1e3:
		return fmt.Sprintf("%.3g ns", ns)
	case ns < 1e6:
		return fmt.Sprintf("%.3g µs", ns/1e3)
	case ns < 1e9:
		return fmt.Sprintf("%.3g ms", ns/1e6)
	}
	return fmt.Sprintf("%.3g s", ns/1e9)
}

// fmtCount formats an allocation count compactly.
func fmtCount(n float64) string {
	switch {
	case math.IsNaN(n):
		return "?"
	case n < 1e4:
		return strconv.FormatFloat(n, 'f', 0, 64)
	case n < 1e6:
		return fmt.Sprintf("%.3gk", n/1e3)
	}
	return fmt.Sprintf("%.3gM", n/1e6)
}

// fmtRatio formats a ratio with two significant digits, as a whole number
// from 10 up.
func fmtRatio(r float64) string {
	if r >= 10 {
		return strconv.FormatFloat(r, 'f', 0, 64)
	}
	return strconv.FormatFloat(r, 'g', 2, 64)
}

// target is one of the library's performance goals, measured as a ratio.
type target struct {
	name    string
	fs      string
	ratio   float64 // NaN if not measured
	limit   float64
	atLeast bool   // the goal is ratio >= limit rather than <=
	detail  string // what the ratio is of
	extra   string // a second condition's outcome, if any
	extraOK bool
	// note says more about the measurement, without bearing on the goal.
	note string
}

// met reports whether the target is met; false if it was not measured.
func (t target) met() bool {
	if math.IsNaN(t.ratio) {
		return false
	}
	ok := t.ratio <= t.limit
	if t.atLeast {
		ok = t.ratio >= t.limit
	}
	return ok && (t.extra == "" || t.extraOK)
}

// printTargets checks the library against its targets.
func (res *results) printTargets(w io.Writer) {
	var ts []target
	for _, fs := range []string{"mem", "disk"} {
		ts = append(ts, res.targets(fs)...)
	}
	fmt.Fprintln(w, "Targets of `overlay` (medians of the same run):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | fs | measured | goal | met |")
	fmt.Fprintln(w, "|---|---|--:|--:|:-:|")
	for _, t := range ts {
		measured := "not measured"
		if !math.IsNaN(t.ratio) {
			measured = fmt.Sprintf("%s×", fmtRatio(t.ratio))
			if t.detail != "" {
				measured += " " + t.detail
			}
		}
		if t.extra != "" {
			measured += "; " + t.extra
		}
		if t.note != "" {
			measured += "; " + t.note
		}
		goal := "≤ "
		if t.atLeast {
			goal = "≥ "
		}
		goal += strconv.FormatFloat(t.limit, 'g', -1, 64) + "×"
		verdict := "**no**"
		switch {
		case math.IsNaN(t.ratio):
			verdict = "–"
		case t.met():
			verdict = "yes"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", t.name, t.fs, measured, goal, verdict)
	}
}

// listingScaling says, for a target that compares the overlay's row a
// with its row b (the 100k listing with the 10k one), how the references
// compare the same way: a bare copy of a listing that long (impl copy),
// and the upper's own listing (impl upper) with what the overlay adds to
// it, where the overlay reads the upper's listing every time (it takes
// longer than that listing). It is "" where neither was measured.
func (res *results) listingScaling(a, b row) string {
	scale := func(impl string) (x, y float64, ok bool) {
		x, _, okA := res.get(a, impl)
		y, _, okB := res.get(b, impl)
		return x, y, okA && okB && y > 0
	}
	var notes []string
	if x, y, ok := scale("copy"); ok {
		notes = append(notes, fmt.Sprintf("a bare copy of the listing: %s×", fmtRatio(x/y)))
	}
	ua, ub, okU := scale("upper")
	oa, ob, okO := scale("overlay")
	if okU && okO && oa > ua && ob > ub {
		notes = append(notes, fmt.Sprintf("the upper's own listing, which each reads again: %s×; the overlay's part: %s×",
			fmtRatio(ua/ub), fmtRatio((oa-ua)/(ob-ub))))
	}
	return strings.Join(notes, "; ")
}

// layersShare says, for the first listing in row cold against the floor's
// full one in row full, what reading the directory in every layer alone
// (impl layers) costs against the same floor. It is "" where that was not
// measured.
func (res *results) layersShare(cold, full row) string {
	l, _, okL := res.get(cold, "layers")
	f, _, okF := res.get(full, "floor")
	if !okL || !okF || f == 0 {
		return ""
	}
	return fmt.Sprintf("reading every layer's copy alone: %s× floor", fmtRatio(l/f))
}

// upperShare says, for a target that compares the overlay with the floor in
// row rw, how the layer's own careful operation (impl upper) compares with
// the floor, and the overlay with it. It is "" where upper was not
// measured.
func (res *results) upperShare(rw row) string {
	u, _, okU := res.get(rw, "upper")
	f, _, okF := res.get(rw, "floor")
	o, _, okO := res.get(rw, "overlay")
	if !okU || !okF || !okO || u == 0 || f == 0 {
		return ""
	}
	return fmt.Sprintf("the layer's own exclusive create with a mode: %s× floor; the overlay: %s× that",
		fmtRatio(u/f), fmtRatio(o/u))
}

// targets returns the targets for one layer kind.
func (res *results) targets(fs string) []target {
	ratio := func(a, b row, implA, implB string) float64 {
		x, _, okA := res.get(a, implA)
		y, _, okB := res.get(b, implB)
		if !okA || !okB || y == 0 {
			return math.NaN()
		}
		return x / y
	}
	r := func(workload, n string) row { return row{workload, fs, n} }
	var ts []target
	for _, w := range []string{"Stat", "Lstat"} {
		rw := r(w, "64")
		_, allocs, ok := res.get(rw, "overlay")
		t := target{name: w + " of a bottom-of-64 file", fs: fs, ratio: ratio(rw, rw, "overlay", "floor"), limit: 1.5,
			detail: "floor", extra: fmt.Sprintf("%s allocs (goal ≤ 2)", fmtCount(allocs)), extraOK: ok && allocs <= 2}
		if !ok {
			t.extra = ""
		}
		ts = append(ts, t)
	}
	ts = append(ts,
		target{name: "Stat of a missing name, N=64", fs: fs, ratio: ratio(r("StatMissing", "64"), r("StatMissing", "64"), "overlay", "floor"), limit: 1.5, detail: "floor"},
		target{name: "Open + read 4 KiB, N=64", fs: fs, ratio: ratio(r("OpenRead4K", "64"), r("OpenRead4K", "64"), "overlay", "floor"), limit: 1.5, detail: "floor"},
		target{name: "Readdir 100k over 8 lowers, full", fs: fs, ratio: ratio(r("Readdir size=100k mode=full", "8"), r("Readdir size=100k mode=full", "8"), "overlay", "floor"), limit: 1.5, detail: "floor"},
		target{name: "Readdir 100k over 8 lowers, cold (fresh Overlay) vs floor's full", fs: fs, ratio: ratio(r("Readdir size=100k mode=cold", "8"), r("Readdir size=100k mode=full", "8"), "overlay", "floor"), limit: 1.5, detail: "floor",
			note: res.layersShare(r("Readdir size=100k mode=cold", "8"), r("Readdir size=100k mode=full", "8"))},
		target{name: "Readdir linear: 100k / 10k, full", fs: fs, ratio: ratio(r("Readdir size=100k mode=full", "8"), r("Readdir size=10k mode=full", "8"), "overlay", "overlay"), limit: 11, detail: "10k time",
			note: res.listingScaling(r("Readdir size=100k mode=full", "8"), r("Readdir size=10k mode=full", "8"))},
	)
	ts = append(ts, target{name: "Readdir linear: 100k / 10k, cold", fs: fs, ratio: ratio(r("Readdir size=100k mode=cold", "8"), r("Readdir size=10k mode=cold", "8"), "overlay", "overlay"), limit: 11, detail: "10k time"})
	for _, size := range []string{"10k", "100k"} {
		ts = append(ts, target{name: "Readdir " + size + ": chunked / full", fs: fs,
			ratio: ratio(r("Readdir size="+size+" mode=chunked", "8"), r("Readdir size="+size+" mode=full", "8"), "overlay", "overlay"), limit: 1.2, detail: "full"})
	}
	for _, size := range []string{"64MiB", "1GiB"} {
		rw := r("CopyUp size="+size, "64")
		if _, _, ok := res.get(rw, "overlay"); !ok && size != "64MiB" {
			continue
		}
		ts = append(ts, target{name: "Copy-up " + size + ", N=64", fs: fs, ratio: ratio(rw, rw, "overlay", "iocopy"), limit: 1.1, detail: "iocopy"})
	}
	ts = append(ts,
		target{name: "Create 10k files, N=64", fs: fs, ratio: ratio(r("Create10k", "64"), r("Create10k", "64"), "overlay", "floor"), limit: 2, detail: "floor",
			note: res.upperShare(r("Create10k", "64"))},
		target{name: "Parallel Stat throughput, 8 goroutines vs 1, N=64", fs: fs, ratio: ratio(r("StatParallel g=1", "64"), r("StatParallel g=8", "64"), "overlay", "overlay"), limit: 1.5, atLeast: true,
			detail: fmt.Sprintf("serial (floor's own gain: %s×)", fmtRatio(ratio(r("StatParallel g=1", "64"), r("StatParallel g=8", "64"), "floor", "floor")))},
	)
	// Each speedup compares the peer in one row with the overlay in another
	// (the same row but for the cold listing, which only the overlay has).
	speedups := []struct{ name, peerWorkload, workload, n string }{
		{"Stat, N=64", "Stat", "Stat", "64"},
		{"Open + read, N=64", "OpenRead4K", "OpenRead4K", "64"},
		{"Readdir 100k, N=8", "Readdir size=100k mode=full", "Readdir size=100k mode=full", "8"},
		{"Readdir 10k, N=8", "Readdir size=10k mode=full", "Readdir size=10k mode=full", "8"},
		{"Readdir 100k, overlay cold vs peer full, N=8", "Readdir size=100k mode=full", "Readdir size=100k mode=cold", "8"},
		{"Readdir 10k, overlay cold vs peer full, N=8", "Readdir size=10k mode=full", "Readdir size=10k mode=cold", "8"},
		{"Create 10k, N=64", "Create10k", "Create10k", "64"},
	}
	for _, peer := range []string{"cow", "bep"} {
		for _, s := range speedups {
			prw := r(s.peerWorkload, s.n)
			if _, _, ok := res.get(prw, peer); !ok {
				continue
			}
			ts = append(ts, target{name: "Faster than " + peer + ": " + s.name, fs: fs,
				ratio: ratio(prw, r(s.workload, s.n), peer, "overlay"), limit: 10, atLeast: true, detail: "(" + peer + " / overlay)"})
		}
	}
	return ts
}
