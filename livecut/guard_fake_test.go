package livecut_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/livecut/livecuttest"
	"github.com/drsync/drsync/qmp"
)

// TestGuardScripted drives Guard through a strict script of QMP commands:
// it resumes only a guest that a cut in flight stopped, waits out a
// migration still ending, and never connects without a cut in flight.
func TestGuardScripted(t *testing.T) {
	status := func(s string) livecuttest.Step {
		return livecuttest.Step{Cmd: "query-status", Reply: map[string]any{"status": s, "running": s == "running"}}
	}
	migration := func(s string) livecuttest.Step {
		return livecuttest.Step{Cmd: "query-migrate", Reply: map[string]any{"status": s, "total-time": 40, "downtime": 10}}
	}
	cont := livecuttest.Step{Cmd: "cont", Args: func(a map[string]any) error { return nil }}
	for _, tc := range []struct {
		name        string
		marked      bool // the cut-in-flight mark exists
		final       bool
		gone        bool // QEMU has exited
		script      []livecuttest.Step
		wantResumed bool
		wantReason  string
	}{
		{name: "no cut in flight", wantReason: "no cut was in flight"},
		{name: "stopped by the cut", marked: true, script: []livecuttest.Step{status("postmigrate"), migration("completed"), cont},
			wantResumed: true, wantReason: "stopped by the cut's migration"},
		{name: "migration still ending", marked: true,
			script:      []livecuttest.Step{status("finish-migrate"), migration("active"), status("postmigrate"), migration("completed"), cont},
			wantResumed: true, wantReason: "stopped by the cut's migration"},
		{name: "paused by the operator", marked: true, script: []livecuttest.Step{status("paused"), migration("")},
			wantReason: "not caused by the cut"},
		{name: "running", marked: true, script: []livecuttest.Step{status("running"), migration("completed")}, wantReason: "the guest runs"},
		{name: "final cut", marked: true, final: true, script: []livecuttest.Step{status("postmigrate"), migration("completed")},
			wantReason: "a final cut"},
		{name: "VM gone", marked: true, gone: true, wantReason: "the VM is gone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			work := t.TempDir()
			if tc.marked {
				b, _ := json.Marshal(map[string]any{"gen": 7, "began": time.Now().Add(-time.Second), "pid": 1})
				os.WriteFile(filepath.Join(work, "cut-in-flight"), b, 0o600)
			}
			if tc.final {
				os.WriteFile(filepath.Join(work, "final"), []byte("final cut 7\n"), 0o600)
			}
			f := livecuttest.New(t, nil)
			f.Expect(tc.script...)
			if tc.gone {
				f.Exit("killed")
				os.WriteFile(filepath.Join(work, "nbd.sock"), nil, 0o600) // the dead QEMU's
			}
			rep, err := livecut.Guard(context.Background(), livecut.GuardOptions{QMPSocket: "qmp.sock", WorkDir: work, Settle: 10 * time.Second,
				Dial: func(ctx context.Context, socket string, o qmp.Options) (livecut.Monitor, error) {
					return f.Dial(ctx, socket, o)
				}})
			if err != nil {
				t.Fatalf("guard: %v", err)
			}
			if rep.Resumed != tc.wantResumed || !strings.Contains(rep.Reason, tc.wantReason) {
				t.Errorf("report %+v: want resumed %v, reason %q", rep, tc.wantResumed, tc.wantReason)
			}
			if rep.Resumed && (rep.Paused <= 0 || rep.Paused > time.Minute) {
				t.Errorf("paused %v", rep.Paused)
			}
			if u := f.Unmet(); len(u) > 0 {
				t.Errorf("commands expected but not issued: %v", u)
			}
			if _, err := os.Stat(filepath.Join(work, "cut-in-flight")); tc.marked && err == nil {
				t.Errorf("the mark of a handled cut stays")
			}
			if _, err := os.Stat(filepath.Join(work, "nbd.sock")); tc.gone && err == nil {
				t.Errorf("the gone VM's NBD socket stays")
			}
		})
	}
}
