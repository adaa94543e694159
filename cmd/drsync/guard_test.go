package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/statusreport"
)

// TestGuestStatus: status says a live guest is paused when the sender
// found it so, when the guard failed, or when a dead sender's cut never
// finished; it tells of the guard's resumes, but not as a pause.
func TestGuestStatus(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	marker := func(began time.Time, pid int) string {
		return fmt.Sprintf(`{"gen":7,"began":%q,"pid":%d}`, began.Format(time.RFC3339Nano), pid)
	}
	tests := []struct {
		name       string
		st         agent.Status
		guard      string // guard.json
		marker     string // live/cut-in-flight
		wantPaused bool
		wantNote   string // in the table's notes; "" for no notes at all
	}{
		{name: "nothing happened", wantNote: ""},
		{name: "sender found the guest paused", st: agent.Status{GuestPaused: &agent.GuestPaused{Since: now.Add(-time.Minute), Detail: "the guest is not running"}},
			wantPaused: true, wantNote: "GUEST PAUSED since 2026-03-01 11:59:00: the guest is not running"},
		{name: "guard resumed the guest", guard: `{"resumes":2,"events":[{"at":"2026-03-01T11:00:00Z","cut":7,"resumed":true,"paused_ms":65}]}`,
			wantNote: "the guard resumed it at 2026-03-01 11:00:00 after about 65 ms (2 time(s) in all)"},
		{name: "guard failed after the sender's last word", st: agent.Status{Updated: now.Add(-time.Hour)},
			guard:      `{"resumes":0,"events":[{"at":"2026-03-01T11:30:00Z","cut":7,"error":"QMP socket busy"}]}`,
			wantPaused: true, wantNote: "the guard could not resume the guest: QMP socket busy"},
		{name: "guard failed, but a sender ran since", st: agent.Status{Updated: now},
			guard: `{"resumes":0,"events":[{"at":"2026-03-01T11:30:00Z","cut":7,"error":"QMP socket busy"}]}`},
		{name: "dead sender's cut never finished", marker: marker(now.Add(-5*time.Second), dead.Process.Pid),
			wantPaused: true, wantNote: "died during the cut"},
		{name: "dead sender's cut, the guard still at work", marker: marker(now.Add(-100*time.Millisecond), dead.Process.Pid), wantNote: ""},
		{name: "live sender's cut in progress", marker: marker(now.Add(-5*time.Second), os.Getpid()), wantNote: ""},
		{name: "live sender's cut stuck", marker: marker(now.Add(-5*time.Minute), os.Getpid()), wantPaused: true, wantNote: "has not finished"},
		{name: "long pause", st: agent.Status{LongPause: &agent.LongPause{Epoch: 9, PauseMS: 1500}}, wantNote: "the cut of epoch 9 paused the guest for 1500 ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &SenderConfig{State: StateConfig{Dir: t.TempDir()}}
			vm := &VMConfig{Name: "web-1", QMP: "/run/web-1.qmp"}
			dir := cfg.stateDir(vm.Name)
			if err := os.MkdirAll(filepath.Join(dir, "live"), 0o700); err != nil {
				t.Fatal(err)
			}
			if tt.guard != "" {
				os.WriteFile(filepath.Join(dir, agent.GuardRecordFile), []byte(tt.guard), 0o600)
			}
			if tt.marker != "" {
				os.WriteFile(filepath.Join(dir, "live", "cut-in-flight"), []byte(tt.marker), 0o600)
			}
			g, err := agent.GuestReport(dir, filepath.Join(dir, "live"), &tt.st, now)
			if err != nil {
				t.Fatal(err)
			}
			if paused := g != nil && g.Paused; paused != tt.wantPaused {
				t.Errorf("paused = %v, want %v (%+v)", paused, tt.wantPaused, g)
			}
			var out bytes.Buffer
			statusreport.WriteGuestNotes(&out, statusreport.Row{VM: "web-1", Guest: g})
			if tt.wantNote == "" && out.Len() > 0 || !strings.Contains(out.String(), tt.wantNote) {
				t.Errorf("notes:\n%s\nwant %q", out.String(), tt.wantNote)
			}
		})
	}
}
