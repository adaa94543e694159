// Command drsync replicates QEMU/KVM VMs to another site for disaster
// recovery: "drsync send" streams consistent epochs of each VM's disks, RAM
// and device state over QUIC with mutual TLS, "drsync receive" keeps a
// crash-safe replica of each, "drsync verify" checks a replica and "drsync
// status" reports how far behind each replica is. Run "drsync help".
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"time"

	"github.com/drsync/drsync/internal/heapprofile"
	"golang.org/x/sys/unix"
)

func main() {
	heapprofile.FromEnv()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole program: it parses args, runs one subcommand and returns
// the exit code. Tests call it in-process.
func run(args []string, stdout, stderr io.Writer) int {
	return runEnv(context.Background(), &env{stdout: stdout, stderr: stderr, now: time.Now}, args)
}

// env is what a subcommand may touch of the outside world.
type env struct {
	stdout, stderr io.Writer
	now            func() time.Time
	listening      func(net.Addr) // if set, told the receiver's address (tests listen on port 0)
}

// command is one subcommand.
type command struct {
	name    string
	short   string // one line for the command list
	args    string // synopsis of the arguments
	summary string
	run     func(ctx context.Context, e *env, set *flag.FlagSet, args []string) error
	flags   func(set *flag.FlagSet) // registers the subcommand's flags on set
}

// commands lists the subcommands in the order help shows them.
func commands() []*command {
	return []*command{keygenCommand(), receiveCommand(), sendCommand(), statusCommand(), verifyCommand(), failoverCommand(), seedCommand(), versionCommand()}
}

func findCommand(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	return nil
}

func runEnv(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		printUsage(e.stderr)
		return exitUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case guardCommandName:
		// Hidden: started by "drsync send" (see guard.go).
		return runGuard(e, os.Stdin)
	case "--version", "-version":
		name = "version"
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 {
			if c := findCommand(rest[0]); c != nil {
				newFlagSet(c, e.stdout).Usage()
				return exitOK
			}
			fmt.Fprintf(e.stderr, "drsync: unknown command %q\n\n", rest[0])
			printUsage(e.stderr)
			return exitUsage
		}
		printUsage(e.stdout)
		return exitOK
	}
	c := findCommand(name)
	if c == nil {
		fmt.Fprintf(e.stderr, "drsync: unknown command %q (run \"drsync help\")\n", name)
		return exitUsage
	}
	// The flag package prints both -h and parse errors to one writer;
	// buffering lets help go to stdout and errors to stderr.
	var parseOut bytes.Buffer
	fs := newFlagSet(c, &parseOut)
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			e.stdout.Write(parseOut.Bytes())
			return exitOK
		}
		e.stderr.Write(parseOut.Bytes())
		return exitUsage
	}
	err := c.run(ctx, e, fs, fs.Args())
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	fmt.Fprintf(e.stderr, "drsync %s: %v\n", c.name, err)
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(e.stderr, "Run \"drsync %s -h\" for usage.\n", c.name)
	}
	return code
}

func newFlagSet(c *command, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("drsync "+c.name, flag.ContinueOnError)
	fs.SetOutput(out)
	c.flags(fs)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: drsync %s %s\n\n%s\n\nFlags:\n", c.name, c.args, c.summary)
		fs.PrintDefaults()
	}
	return fs
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, `drsync replicates QEMU/KVM VMs (disks, RAM, device state) to another site
over QUIC with mutual TLS, keeping a crash-safe replica there.

Usage: drsync <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.short)
	}
	fmt.Fprint(w, `  help     show this help, or "drsync help <command>"

Flags may be written -flag or --flag. Example configurations with every key
explained are in testdata/configs/sender.toml and receiver.toml.

`)
	fmt.Fprint(w, exitCodesHelp)
}

// noArgs refuses positional arguments, which are always a mistake (a
// forgotten "--config").
func noArgs(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return nil
}

// logFlags are the logging flags of the long-running subcommands.
type logFlags struct {
	level string
	json  bool
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&l.json, "log-json", false, "log JSON objects instead of text")
}

// logger builds the structured logger writing to w.
func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", l.level)
	}
	o := &slog.HandlerOptions{Level: level}
	if l.json {
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return slog.New(slog.NewTextHandler(w, o)), nil
}

// isTerminal reports whether w is a terminal: progress bars are for people,
// not for log files. A character device is not enough (/dev/null is one):
// only a terminal answers the terminal-attributes ioctl.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
