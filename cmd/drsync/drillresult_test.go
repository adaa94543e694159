package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs"
)

func drillRunbook() *runbook.Runbook {
	return &runbook.Runbook{
		Name:   "site-b",
		Groups: []runbook.Group{{Name: "db", VMs: []string{"db-1"}}, {Name: "apps", VMs: []string{"web-1"}}},
		VMs: []runbook.VM{
			{Name: "db-1", Checks: []runbook.Check{{Kind: runbook.CheckRunning}}},
			{Name: "web-1", Checks: []runbook.Check{{Kind: runbook.CheckRunning}, {Kind: runbook.CheckTCP, Address: "10.0.0.1:80"}}},
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
		{"refused at preflight", nil, runbook.ErrPreflight, map[string]bool{"db-1": false, "web-1": false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			log, err := runbook.OpenLog(filepath.Join(t.TempDir(), "drill.log"))
			if err != nil {
				t.Fatal(err)
			}
			defer log.Close()
			for _, s := range tc.done {
				if err := log.Append(runbook.Record{Step: s, Status: runbook.StatusDone, Epoch: 7}); err != nil {
					t.Fatal(err)
				}
			}
			got := drillOutcomes(drillRunbook(), log, tc.runErr, at)
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
		results []drillResult
		want    drillResult
	}{
		{[]drillResult{{VM: "db-1", OK: true, At: t1, LastSuccess: t1}, {VM: "gone-1", OK: true, At: t1, LastSuccess: t1}}, drillResult{OK: true, At: t1, LastSuccess: t1}},
		{[]drillResult{{VM: "db-1", OK: false, At: t2}}, drillResult{OK: false, At: t2, LastSuccess: t1}},
	}
	for i, s := range steps {
		if err := writeDrillResults(vfs.Default, dir, s.results); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		got := drillResults(vfs.Default, dir)
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

// drsync failover --drill records a drill refused at preflight as failed in
// the replica's directory, where the receiver's metrics read it.
func TestFailoverDrillRecordsResult(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "receiver.toml"), []byte(baseReceiver))
	if err := os.MkdirAll(filepath.Join(dir, "replicas", "web-1"), 0o750); err != nil {
		t.Fatal(err)
	}
	rb := filepath.Join(dir, "runbook.toml")
	writeFile(t, rb, []byte(`
name = "site-b"
receiver_config = "receiver.toml"
work_dir = "failover"

[[group]]
name = "apps"
vms = ["web-1"]

[[vm]]
name = "web-1"
accel = "tcg"
args = ["-display", "none"]
  [[vm.disk]]
  replica = "vda"
  node = "disk0"
`))
	code, out, errs := drsync(t, "failover", "--runbook", rb, "--drill")
	if code == exitOK {
		t.Fatalf("drill of an empty replica passed:\n%s%s", out, errs)
	}
	r, err := readDrillResult(vfs.Default, filepath.Join(dir, "replicas", "web-1", drillResultFile))
	if err != nil {
		t.Fatalf("no drill result: %v\n%s", err, errs)
	}
	if r.OK || r.VM != "web-1" || r.Runbook != "site-b" || !strings.Contains(r.Detail, "refused before anything started") {
		t.Errorf("drill result %+v", r)
	}
	if d := drillResults(vfs.Default, filepath.Join(dir, "replicas")); len(d) != 1 || d["web-1"].OK {
		t.Errorf("receiver reads %+v", d)
	}
	// The receiver's status shows the failed drill, in the table and in JSON.
	if code, out, _ := drsync(t, "status", "--config", filepath.Join(dir, "receiver.toml")); !regexp.MustCompile(`(?m)^web-1 .*FAILED epoch 0 `).MatchString(out) {
		t.Errorf("status (exit %d) does not show the failed drill:\n%s", code, out)
	}
	if _, out, _ := drsync(t, "status", "--config", filepath.Join(dir, "receiver.toml"), "--json"); !strings.Contains(out, `"drill"`) || !strings.Contains(out, `"ok": false`) {
		t.Errorf("status --json does not carry the drill:\n%s", out)
	}
}

// The receiver's metrics carry what the replicas' files say: the outcome
// of the last drill, the lag of a replica nothing was committed to since
// the receiver started, and the storage's space.
func TestReceiverMetricsFromReplicaFiles(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	keygen(t, keys, "site-b")
	conf := filepath.Join(dir, "receiver.toml")
	writeFile(t, conf, []byte(`
listen = "127.0.0.1:0"
metrics = "127.0.0.1:0"
[identity]
cert = "keys/site-b.crt"
key = "keys/site-b.key"
[storage]
dir = "replicas"
[[sender]]
name = "site-a"
fingerprint = "`+fpA+`"
vms = ["web-1"]
`))
	rdir := filepath.Join(dir, "replicas", "web-1")
	if err := os.MkdirAll(rdir, 0o750); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(rdir, replicaLockName), nil)
	cut := time.Now().Add(-time.Hour).UTC()
	if err := writeJSONAtomic(filepath.Join(rdir, receiverStatusFile), &receiverStatus{VM: "web-1", Epoch: 3, Cut: cut, Epochs: 3}); err != nil {
		t.Fatal(err)
	}
	if err := writeDrillResults(vfs.Default, filepath.Join(dir, "replicas"), []drillResult{{VM: "web-1", OK: false, At: time.Unix(2000, 0), Detail: "check failed"}}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var logs hosttools.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- runEnv(ctx, &env{stdout: &logs, stderr: &logs, now: time.Now}, []string{"receive", "--config", conf})
	}()
	defer func() {
		cancel()
		<-done
	}()
	addr := regexp.MustCompile(`msg=metrics addr=(http://\S+/metrics)`)
	var url string
	for deadline := time.Now().Add(20 * time.Second); url == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := addr.FindStringSubmatch(logs.String()); m != nil {
			url = m[1]
		}
	}
	if url == "" {
		t.Fatalf("no metrics address logged:\n%s", logs.String())
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out := string(b)
	for _, want := range []string{
		`drsync_drill_last_result{vm="web-1"} 0`,
		`drsync_drill_last_run_timestamp_seconds{vm="web-1"} 2000`,
		`drsync_receiver_storage_available_bytes `,
		`drsync_receiver_storage_size_bytes `,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s:\n%s", want, out)
		}
	}
	var lag float64
	if m := regexp.MustCompile(`(?m)^drsync_receiver_rpo_lag_seconds\{vm="web-1"\} (\S+)$`).FindStringSubmatch(out); m != nil {
		fmt.Sscan(m[1], &lag)
	}
	if lag < 3600 || lag > 3600+300 {
		t.Errorf("lag of the replica from its status file: %v s, want about an hour:\n%s", lag, out)
	}
}
