package main

import (
	"bufio"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/afero"

	"github.com/stackfs/overlay"
)

var diffCommand = command{
	name:  "diff",
	args:  "--upper DIR [--lower LAYER]...",
	about: "Print what the upper changes against the lowers, as docker diff does (A added, C changed, D deleted).",
	setup: func(fs *flag.FlagSet) runner {
		var s stackFlags
		s.register(fs)
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usageError("no arguments expected")
			}
			st, err := s.openUpper()
			if err != nil {
				return err
			}
			defer st.close()
			changes, err := st.o.Changes()
			if err != nil {
				return err
			}
			for _, c := range changes {
				fmt.Fprintln(e.stdout, c)
			}
			return nil
		}
	},
}

var exportCommand = command{
	name:  "export",
	args:  "--upper DIR [--lower LAYER]... [--gzip] [--clamp TIME] > layer.tar",
	about: "Write the upper as an OCI image layer tar to stdout.",
	setup: func(fs *flag.FlagSet) runner {
		var s stackFlags
		s.register(fs)
		gz := fs.Bool("gzip", false, "compress the layer with gzip")
		clamp := fs.String("clamp", os.Getenv("SOURCE_DATE_EPOCH"), "write no mtime later than `TIME` (RFC 3339 or Unix seconds; default $SOURCE_DATE_EPOCH)")
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usageError("no arguments expected; the layer goes to stdout")
			}
			opts, err := clampOption(*clamp)
			if err != nil {
				return err
			}
			if f, ok := e.stdout.(*os.File); ok && isTerminal(f) {
				return usageError("refusing to write a layer tar to a terminal: redirect stdout")
			}
			st, err := s.openUpper()
			if err != nil {
				return err
			}
			defer st.close()
			return export(e, st.o, s.upper, *gz, opts)
		}
	},
}

// clampOption parses the --clamp value.
func clampOption(v string) ([]overlay.ExportOption, error) {
	if v == "" {
		return nil, nil
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		return []overlay.ExportOption{overlay.ClampTimes(time.Unix(secs, 0))}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return nil, usageError("--clamp: want RFC 3339 or Unix seconds, got " + strconv.Quote(v))
	}
	return []overlay.ExportOption{overlay.ClampTimes(t)}, nil
}

// export writes the upper of o, the directory upper, as a layer to stdout,
// with progress on a terminal's stderr.
func export(e *env, o *overlay.Overlay, upper string, gz bool, opts []overlay.ExportOption) error {
	p := startProgress(e, "export", upperSize(upper))
	bw := bufio.NewWriterSize(e.stdout, 64<<10)
	var w io.Writer = &countingWriter{w: bw, p: p}
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(bw)
		w = &countingWriter{w: zw, p: p}
	}
	err := overlay.ExportLayer(w, o, opts...)
	if err == nil && zw != nil {
		err = zw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	p.finish()
	return err
}

// upperSize returns the bytes of the files in the upper directory dir, the
// work directory left out.
func upperSize(dir string) int64 {
	var total int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return nil // best effort: the total only scales the progress bar
		case d.IsDir() && d.Name() == ".wh..wh.work":
			return filepath.SkipDir
		case d.Type().IsRegular():
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

var applyCommand = command{
	name:  "apply",
	args:  "[--max-size BYTES] LAYER DIR",
	about: "Apply an OCI layer tar (plain or gzipped; - for stdin) onto the directory DIR, as containerd does.",
	setup: func(fs *flag.FlagSet) runner {
		maxSize := fs.Int64("max-size", overlay.DefaultMaxLayerSize, "refuse a layer with more than `BYTES` of file content")
		return func(e *env, args []string) error {
			if len(args) != 2 {
				return usageError("want LAYER and DIR")
			}
			r, closeLayer, err := openInput(e, args[0])
			if err != nil {
				return err
			}
			defer closeLayer()
			if err := os.MkdirAll(args[1], 0o755); err != nil {
				return err
			}
			dst := afero.NewBasePathFs(afero.NewOsFs(), args[1])
			return overlay.ApplyLayer(dst, bufio.NewReaderSize(r, 64<<10), overlay.MaxLayerSize(*maxSize))
		}
	},
}

// openInput opens the file name, or stdin for "-".
func openInput(e *env, name string) (io.Reader, func(), error) {
	if name == "-" {
		return e.stdin, func() {}, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { f.Close() }, nil
}

var flattenCommand = command{
	name:  "flatten",
	args:  "--lower LAYER... [--upper DIR] OUTDIR",
	about: "Write the merged view into OUTDIR (missing or empty), squashing the layers.",
	setup: func(fs *flag.FlagSet) runner {
		var s stackFlags
		s.register(fs)
		return func(e *env, args []string) error {
			if len(args) != 1 {
				return usageError("want OUTDIR")
			}
			if err := emptyDir(args[0]); err != nil {
				return err
			}
			st, err := s.openView()
			if err != nil {
				return err
			}
			defer st.close()
			return flatten(e, st.o, args[0])
		}
	},
}

// emptyDir makes sure dir exists and is empty.
func emptyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	list, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(list) > 0 {
		return fmt.Errorf("%s: %w", dir, errExists)
	}
	return nil
}

// flatten writes the merged view of o into dir, with progress on a
// terminal's stderr.
func flatten(e *env, o *overlay.Overlay, dir string) error {
	var total int64
	if e.stderrTTY {
		total = viewSize(o)
	}
	p := startProgress(e, "flatten", total)
	dst := meteredFs{BasePathFs: afero.NewBasePathFs(afero.NewOsFs(), dir).(*afero.BasePathFs), p: p}
	err := overlay.Flatten(dst, o)
	p.finish()
	return err
}

// viewSize returns the bytes of the files in the merged view of o.
func viewSize(o *overlay.Overlay) int64 {
	var total int64
	afero.Walk(o, "/", func(_ string, info fs.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			total += info.Size()
		}
		return nil // best effort: the total only scales the progress bar
	})
	return total
}
