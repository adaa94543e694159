package runbook

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/vfs"
)

func drillRunbook() *Runbook {
	return &Runbook{
		Name:   "site-b",
		Groups: []Group{{Name: "db", VMs: []string{"db-1"}}, {Name: "apps", VMs: []string{"web-1"}}},
		VMs: []VM{
			{Name: "db-1", Checks: []Check{{Kind: CheckRunning}}},
			{Name: "web-1", Checks: []Check{{Kind: CheckRunning}, {Kind: CheckTCP, Address: "10.0.0.1:80"}}},
		},
		Drill: true,
	}
}

func TestDrillOutcomes(t *testing.T) {
	at := time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)
	failed := errors.New(`runbook "site-b" stopped at step check:web-1:1:tcp`)
	tests := []struct {
		name   string
		done   []string // steps the log records as done
		runErr error
		ok     map[string]bool
	}{
		{"passed", []string{"start:db-1", "check:db-1:0:running", "start:web-1", "check:web-1:0:running", "check:web-1:1:tcp"}, nil,
			map[string]bool{"db-1": true, "web-1": true}},
		{"second vm's check failed", []string{"start:db-1", "check:db-1:0:running", "start:web-1", "check:web-1:0:running"}, failed,
			map[string]bool{"db-1": true, "web-1": false}},
		{"refused at preflight", nil, ErrPreflight, map[string]bool{"db-1": false, "web-1": false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			log, err := OpenLog(filepath.Join(t.TempDir(), "drill.log"))
			if err != nil {
				t.Fatal(err)
			}
			defer log.Close()
			for _, s := range tc.done {
				if err := log.Append(Record{Step: s, Status: StatusDone, Epoch: 7}); err != nil {
					t.Fatal(err)
				}
			}
			got := DrillOutcomes(drillRunbook(), log, tc.runErr, at)
			if len(got) != len(tc.ok) {
				t.Fatalf("%d results, want %d", len(got), len(tc.ok))
			}
			for _, r := range got {
				if r.OK != tc.ok[r.VM] || !r.At.Equal(at) || r.Runbook != "site-b" {
					t.Errorf("%s: %+v, want ok %v", r.VM, r, tc.ok[r.VM])
				}
				if r.OK && (r.Epoch != 7 || !r.LastSuccess.Equal(at)) {
					t.Errorf("%s passed: %+v", r.VM, r)
				}
				if !r.OK && (!r.LastSuccess.IsZero() || tc.runErr != nil && !strings.Contains(r.Detail, tc.runErr.Error())) {
					t.Errorf("%s failed: %+v", r.VM, r)
				}
			}
		})
	}
}

// A failed drill keeps the time of the last one that passed; a VM without
// a replica directory gets none.
func TestDrillResultFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "db-1"), 0o750); err != nil {
		t.Fatal(err)
	}
	t1, t2 := time.Unix(1000, 0).UTC(), time.Unix(2000, 0).UTC()
	steps := []struct {
		results []DrillResult
		want    DrillResult
	}{
		{[]DrillResult{{VM: "db-1", OK: true, At: t1, LastSuccess: t1}, {VM: "gone-1", OK: true, At: t1, LastSuccess: t1}}, DrillResult{OK: true, At: t1, LastSuccess: t1}},
		{[]DrillResult{{VM: "db-1", OK: false, At: t2}}, DrillResult{OK: false, At: t2, LastSuccess: t1}},
	}
	for i, s := range steps {
		if err := WriteDrillResults(vfs.Default, dir, s.results); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		got := ReadDrillResults(vfs.Default, dir)
		d, ok := got["db-1"]
		if len(got) != 1 || !ok || d.OK != s.want.OK || !d.At.Equal(s.want.At) || !d.LastSuccess.Equal(s.want.LastSuccess) {
			t.Errorf("step %d: %+v, want db-1 %+v", i, got, s.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "gone-1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a drill result created a replica directory: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "db-1", "*.tmp")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
