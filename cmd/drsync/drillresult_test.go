package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/internal/jsonfile"
	"github.com/drsync/drsync/receiver/serve"
	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs"
)

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
	r, ok := runbook.ReadDrillResults(vfs.Default, filepath.Join(dir, "replicas"))["web-1"]
	if !ok {
		t.Fatalf("no drill result\n%s", errs)
	}
	if r.OK || r.VM != "web-1" || r.Runbook != "site-b" || !strings.Contains(r.Detail, "refused before anything started") {
		t.Errorf("drill result %+v", r)
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
	writeFile(t, filepath.Join(rdir, "LOCK"), nil)
	cut := time.Now().Add(-time.Hour).UTC()
	if err := jsonfile.WriteAtomic(filepath.Join(rdir, serve.StatusFile), &serve.Status{VM: "web-1", Epoch: 3, Cut: cut, Epochs: 3}); err != nil {
		t.Fatal(err)
	}
	if err := runbook.WriteDrillResults(vfs.Default, filepath.Join(dir, "replicas"), []runbook.DrillResult{{VM: "web-1", OK: false, At: time.Unix(2000, 0), Detail: "check failed"}}); err != nil {
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
