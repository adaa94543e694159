package main

import (
	"bytes"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/drsync/drsync/wire"
)

func TestVersionCommand(t *testing.T) {
	protocol := fmt.Sprintf("protocol  %d..%d", wire.MinVersion, wire.Version)
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, errs := drsync(t, args...)
		if code != exitOK || errs != "" {
			t.Fatalf("drsync %s: exit %d: %s", strings.Join(args, " "), code, errs)
		}
		for _, want := range []string{"drsync ", "revision  ", runtime.Version(), protocol} {
			if !strings.Contains(out, want) {
				t.Errorf("drsync %s: output lacks %q:\n%s", strings.Join(args, " "), want, out)
			}
		}
	}
	if code, _, errs := drsync(t, "version", "extra"); code != exitUsage || !strings.Contains(errs, `unexpected argument "extra"`) {
		t.Errorf("version extra: exit %d: %s", code, errs)
	}
	if _, out, _ := drsync(t, "help"); !strings.Contains(out, "version ") {
		t.Errorf("help does not list version:\n%s", out)
	}
}

func TestPrintVersion(t *testing.T) {
	tests := []struct {
		name string
		bi   *debug.BuildInfo
		want []string
		not  []string
	}{
		{"no build info", nil, []string{"drsync unknown\n", "revision  unknown\n", runtime.Version()}, []string{"time "}},
		{"clean tree", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "e51cb59abc"}, {Key: "vcs.time", Value: "2026-12-04T10:00:00Z"}, {Key: "vcs.modified", Value: "false"}}},
			[]string{"drsync v1.2.3\n", "revision  e51cb59abc\n", "time      2026-12-04T10:00:00Z", "go        go1.26.8"}, []string{"modified"}},
		{"dirty tree", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "e51cb59abc"}, {Key: "vcs.modified", Value: "true"}}},
			[]string{"drsync (devel)\n", "revision  e51cb59abc (modified: uncommitted changes)"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			printVersion(&b, tc.bi)
			out := b.String()
			for _, w := range append(tc.want, fmt.Sprintf("protocol  %d..%d", wire.MinVersion, wire.Version)) {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(out, n) {
					t.Errorf("output has %q:\n%s", n, out)
				}
			}
		})
	}
}
