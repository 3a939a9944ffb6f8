// Command ovl inspects and builds overlay stacks of image layers: layers
// given as directories or as OCI layer tars (.tar, or gzipped .tar.gz),
// stacked with the Linux OverlayFS model of github.com/stackfs/overlay.
//
// Every subcommand that reads a stack takes --lower LAYER, repeatable and
// topmost first (the kernel's lowerdir order), and an optional --upper DIR:
//
//	ovl ls     --lower app.tar --lower base.tar [--upper DIR] [-l] [PATH]...
//	ovl cat    --lower app.tar --lower base.tar [--upper DIR] PATH...
//	ovl tree   --lower app.tar --lower base.tar [--upper DIR] [PATH]
//	ovl stat   --lower app.tar --lower base.tar [--upper DIR] [-L] PATH...
//	ovl diff   --upper DIR --lower base.tar
//	ovl export --upper DIR --lower base.tar [--gzip] [--clamp TIME] > layer.tar
//	ovl apply  layer.tar DIR
//	ovl flatten --lower app.tar --lower base.tar [--upper DIR] OUTDIR
//	ovl demo   [--write DIR]
//
// Output goes to stdout; errors go to stderr with a non-zero exit status.
// Run "ovl demo" for a tour over a two-layer example image, and
// "ovl COMMAND --help" for each command's options.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// env is what a command runs with: its streams, and whether stderr is a
// terminal that can show progress.
type env struct {
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer
	stderrTTY bool
}

// command is one subcommand of ovl.
type command struct {
	name  string
	args  string // the synopsis after the name
	about string // one line
	setup func(fs *flag.FlagSet) runner
}

// runner runs a command once its flags are parsed, with the positional
// arguments.
type runner func(e *env, args []string) error

// commands returns the subcommands, by name.
func commands() map[string]command {
	list := []command{
		lsCommand, catCommand, treeCommand, statCommand,
		diffCommand, exportCommand, applyCommand, flattenCommand, demoCommand,
	}
	m := make(map[string]command, len(list))
	for _, c := range list {
		m[c.name] = c
	}
	return m
}

func main() {
	e := &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, stderrTTY: isTerminal(os.Stderr)}
	os.Exit(run(e, os.Args[1:]))
}

// isTerminal reports whether f is a character device other than
// /dev/null: a terminal, as far as the standard library can tell.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	null, err := os.Stat(os.DevNull)
	return err != nil || !os.SameFile(fi, null)
}

// run runs ovl with args and returns the exit status: 0 for success, 1 for
// a failure, 2 for a usage error.
func run(e *env, args []string) int {
	if len(args) == 0 {
		usage(e.stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(e.stdout)
		return 0
	}
	c, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(e.stderr, "ovl: unknown command %q\n\n", args[0])
		usage(e.stderr)
		return 2
	}
	return c.exec(e, args[1:])
}

// exec parses the command's flags and runs it.
func (c command) exec(e *env, args []string) int {
	fs := flag.NewFlagSet("ovl "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	r := c.setup(fs)
	pos, err := parseArgs(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.usage(e.stdout, fs)
		return 0
	case err != nil:
		fmt.Fprintf(e.stderr, "ovl %s: %v\n", c.name, err)
		c.usage(e.stderr, fs)
		return 2
	}
	if err := r(e, pos); err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(e.stderr, "ovl %s: %v\n", c.name, err)
			c.usage(e.stderr, fs)
			return 2
		}
		fmt.Fprintf(e.stderr, "ovl %s: %v\n", c.name, err)
		return 1
	}
	return 0
}

// usageError is a mistake in the command line rather than a failure.
type usageError string

func (u usageError) Error() string { return string(u) }

// parseArgs parses flags wherever they stand among the positional
// arguments, which it returns; "--" ends the flags.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// usage prints the command's synopsis and flags to w.
func (c command) usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: ovl %s %s\n\n%s\n", c.name, c.args, c.about)
	var flags []string
	fs.VisitAll(func(f *flag.Flag) {
		name, help := flag.UnquoteUsage(f)
		dashes := "--"
		if len(f.Name) == 1 {
			dashes = "-"
		}
		flags = append(flags, strings.TrimRight(fmt.Sprintf("  %s%s %s", dashes, f.Name, name), " ")+"\n    \t"+help)
	})
	if len(flags) > 0 {
		fmt.Fprintf(w, "\nflags:\n%s\n", strings.Join(flags, "\n"))
	}
}

// usage prints ovl's synopsis to w.
func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: ovl COMMAND [flags] [args]")
	fmt.Fprintln(w, "\novl stacks image layers, given as directories or layer tars (.tar,")
	fmt.Fprintln(w, ".tar.gz), as Linux OverlayFS does. --lower is repeatable, topmost first.")
	fmt.Fprintln(w, "\ncommands:")
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for name := range cmds {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-8s %s\n", name, cmds[name].about)
	}
	fmt.Fprintln(w, "\nRun \"ovl COMMAND --help\" for a command's flags, \"ovl demo\" for a tour.")
}
