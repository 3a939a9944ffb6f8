package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/afero"
)

// progress shows a bar on a terminal's stderr for work that lasts: nothing
// appears for work done within the first half second.
type progress struct {
	w     io.Writer
	label string
	total int64
	done  atomic.Int64
	stop  chan struct{}
	wg    sync.WaitGroup
	shown atomic.Bool
}

// Timing of the progress bar.
var (
	progressDelay = 500 * time.Millisecond
	progressTick  = 100 * time.Millisecond
)

// startProgress starts a bar for total bytes of work, if stderr is a
// terminal and there is work to show.
func startProgress(e *env, label string, total int64) *progress {
	p := &progress{w: e.stderr, label: label, total: total, stop: make(chan struct{})}
	if e.stderrTTY && total > 0 {
		p.wg.Add(1)
		go p.loop()
	}
	return p
}

// loop redraws the bar until finish.
func (p *progress) loop() {
	defer p.wg.Done()
	select {
	case <-p.stop:
		return
	case <-time.After(progressDelay):
	}
	t := time.NewTicker(progressTick)
	defer t.Stop()
	for {
		p.draw()
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

// add counts n more bytes done.
func (p *progress) add(n int64) { p.done.Add(n) }

// finish stops the bar, drawing it complete if it was shown.
func (p *progress) finish() {
	close(p.stop)
	p.wg.Wait()
	if p.shown.Load() {
		p.draw()
		fmt.Fprintln(p.w)
	}
}

// draw draws the bar once.
func (p *progress) draw() {
	p.shown.Store(true)
	done := min(p.done.Load(), p.total)
	const width = 30
	filled := int(done * width / p.total)
	bar := strings.Repeat("#", filled) + strings.Repeat("-", width-filled)
	fmt.Fprintf(p.w, "\r%-7s [%s] %3d%% %s/%s", p.label, bar, done*100/p.total, mib(done), mib(p.total))
}

// mib formats n bytes in MiB.
func mib(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	p *progress
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.p.add(int64(n))
	return n, err
}

// meteredFs is a directory on disk whose file writes count as progress. It
// keeps every method of afero.BasePathFs, RealPath included, so that the
// overlay writes symlinks verbatim.
type meteredFs struct {
	*afero.BasePathFs
	p *progress
}

// OpenFile opens a file whose writes count.
func (m meteredFs) OpenFile(name string, flag int, perm os.FileMode) (afero.File, error) {
	f, err := m.BasePathFs.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return meteredFile{File: f, p: m.p}, nil
}

// Create creates a file whose writes count.
func (m meteredFs) Create(name string) (afero.File, error) {
	return m.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
}

// meteredFile counts what is written to it.
type meteredFile struct {
	afero.File
	p *progress
}

func (f meteredFile) Write(b []byte) (int, error) {
	n, err := f.File.Write(b)
	f.p.add(int64(n))
	return n, err
}
