package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/drsync/drsync/wire"
)

func versionCommand() *command {
	c := &command{
		name:  "version",
		short: "print the build (module version, VCS revision, Go) and protocol versions",
		args:  "",
		summary: `Print what this binary is: the module version, the VCS revision and
commit time it was built from (and whether the tree had uncommitted
changes), the Go version, and the wire protocol versions it speaks. Also
"drsync --version".`,
		flags: func(*flag.FlagSet) {},
	}
	c.run = func(_ context.Context, e *env, _ *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		bi, _ := debug.ReadBuildInfo()
		printVersion(e.stdout, bi)
		return nil
	}
	return c
}

// printVersion writes the version report of the build bi (nil when the
// binary carries no build information).
func printVersion(w io.Writer, bi *debug.BuildInfo) {
	version, revision, built, modified := "unknown", "unknown", "", false
	goVersion := runtime.Version()
	if bi != nil {
		if v := bi.Main.Version; v != "" {
			version = v
		}
		if bi.GoVersion != "" {
			goVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.time":
				built = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if modified {
		revision += " (modified: uncommitted changes)"
	}
	fmt.Fprintf(w, "drsync %s\n", version)
	fmt.Fprintf(w, "  revision  %s\n", revision)
	if built != "" {
		fmt.Fprintf(w, "  time      %s (commit time of the revision)\n", built)
	}
	fmt.Fprintf(w, "  go        %s %s/%s\n", goVersion, runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(w, "  protocol  %d..%d (ALPN %s)\n", wire.MinVersion, wire.Version, wire.ALPN)
}
