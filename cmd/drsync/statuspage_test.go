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

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/internal/jsonfile"
	"github.com/drsync/drsync/receiver/serve"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/statuspage"
	"github.com/drsync/drsync/statusreport"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs"
)

// The sender's page carries what each VM's status file says.
func TestSenderPageFromStatusFiles(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 4, 11, 0, 0, 0, time.UTC)
	cfg := &SenderConfig{State: StateConfig{Dir: dir}, vms: []agent.VMSettings{
		{Name: "web-1", RPOTarget: 5 * time.Minute},
		{Name: "db-1", QMP: filepath.Join(dir, "db-1.qmp")},
		{Name: "new-1"},
	}}
	write := func(st agent.Status) {
		if err := jsonfile.WriteAtomic(filepath.Join(cfg.stateDir(st.VM), agent.StatusFile), &st); err != nil {
			t.Fatal(err)
		}
	}
	write(agent.Status{VM: "web-1", Epoch: 40, Cut: now.Add(-30 * time.Second), RecentPausesMS: []float64{9, 14.5},
		LastError: "an old error", LastErrorAt: now.Add(-time.Hour), // history: epochs committed since
		Flow: &agent.FlowStatus{GoodputBytesPerSecond: 2e6, RPOTargetSeconds: 120, BreachPredicted: true}})
	write(agent.Status{VM: "db-1", Epoch: 7, Cut: now.Add(-10 * time.Minute), ConsecutiveFailures: 3, LastError: "guest is paused",
		GuestPaused: &agent.GuestPaused{Since: now.Add(-9 * time.Minute), Detail: "guest is paused by someone else"}})

	p := statusreport.SenderPage(cfg.statusVMs(cfg.vms), now)
	want := []statuspage.VM{
		{Name: "web-1", Epoch: 40, Cut: now.Add(-30 * time.Second), RPOTarget: 2 * time.Minute, BreachPredicted: true,
			LastPause: 14500 * time.Microsecond, Goodput: 2e6},
		{Name: "db-1", Epoch: 7, Cut: now.Add(-10 * time.Minute), Failures: 3, LastError: "guest is paused",
			GuestPaused: "guest is paused by someone else", PausedSince: now.Add(-9 * time.Minute)},
		{Name: "new-1"},
	}
	if p.Role != "sender" || len(p.VMs) != len(want) {
		t.Fatalf("page %+v", p)
	}
	for i := range want {
		if g, w := fmt.Sprintf("%+v", p.VMs[i]), fmt.Sprintf("%+v", want[i]); g != w {
			t.Errorf("VM %d:\n got %s\nwant %s", i, g, w)
		}
	}
}

// writeManifest writes a manifest of vm at epoch to dir.
func writeManifest(t *testing.T, dir, vm string, epoch uint64, cut time.Time) {
	t.Helper()
	m := &replica.Manifest{Format: 1, VM: vm, Epoch: epoch, Cut: cut, Applied: cut}
	m.StateID = m.ComputeStateID()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "MANIFEST"), b)
}

// The receiver's page carries what each replica holds: its committed
// epoch, its recovery points, its last error and its last drill.
func TestReceiverPageFromReplicas(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 4, 11, 0, 0, 0, time.UTC)
	cfg := &ReceiverConfig{Storage: StorageConfig{Dir: dir},
		set: serve.Settings{Access: serve.Access{Senders: []serve.Sender{{Name: "a", VMs: []string{"web-1", "db-1", "new-1"}}}}}}
	web := cfg.replicaDir("web-1")
	writeManifest(t, web, "web-1", 5, now.Add(-time.Minute))
	for _, e := range []uint64{3, 4} { // two whole points below the committed epoch
		pd := filepath.Join(web, "points", fmt.Sprint(e))
		writeManifest(t, pd, "web-1", e, now.Add(-time.Duration(6-e)*time.Minute))
		writeFile(t, filepath.Join(pd, "COMPLETE"), []byte("ok\n"))
	}
	db := cfg.replicaDir("db-1")
	writeManifest(t, db, "db-1", 9, now.Add(-2*time.Minute))
	if err := jsonfile.WriteAtomic(filepath.Join(db, serve.StatusFile), &serve.Status{VM: "db-1", Epoch: 9, LastError: "stream reset"}); err != nil {
		t.Fatal(err)
	}
	at := now.Add(-time.Hour)
	if err := runbook.WriteDrillResults(vfs.Default, dir, []runbook.DrillResult{
		{VM: "web-1", OK: true, At: at, Epoch: 4, Detail: "started from epoch 4; every check passed"},
		{VM: "db-1", OK: false, At: at, Epoch: 8, Detail: "step db-1/check did not pass"},
	}); err != nil {
		t.Fatal(err)
	}

	p := cfg.statusSource(replica.FileStore{FS: vfs.Default, Root: cfg.Storage.Dir}).Page(now)
	want := []statuspage.VM{ // in name order, as "drsync status" lists them
		{Name: "db-1", Epoch: 9, Cut: now.Add(-2 * time.Minute), Points: 1, LastError: "stream reset",
			Drill: &statuspage.Drill{Epoch: 8, At: at, OK: false, Detail: "step db-1/check did not pass"}},
		{Name: "new-1"},
		{Name: "web-1", Epoch: 5, Cut: now.Add(-time.Minute), Points: 3,
			Drill: &statuspage.Drill{Epoch: 4, At: at, OK: true, Detail: "started from epoch 4; every check passed"}},
	}
	if p.Role != "receiver" || len(p.VMs) != len(want) {
		t.Fatalf("page %+v", p)
	}
	for i := range want {
		g, w := p.VMs[i], want[i]
		gd, wd := g.Drill, w.Drill
		g.Drill, w.Drill = nil, nil
		if fmt.Sprintf("%+v", g) != fmt.Sprintf("%+v", w) || fmt.Sprintf("%+v", gd) != fmt.Sprintf("%+v", wd) {
			t.Errorf("VM %d:\n got %+v drill %+v\nwant %+v drill %+v", i, g, gd, w, wd)
		}
	}
}

// A receiver with a metrics address serves the page beside the metrics.
func TestReceiverServesStatusPage(t *testing.T) {
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
vms = ["web-1", "db-1"]
`))
	replicas := filepath.Join(dir, "replicas")
	for _, vm := range []string{"web-1", "db-1"} {
		if err := os.MkdirAll(filepath.Join(replicas, vm), 0o750); err != nil {
			t.Fatal(err)
		}
		writeManifest(t, filepath.Join(replicas, vm), vm, 12, time.Now().Add(-time.Minute).UTC())
	}
	if err := runbook.WriteDrillResults(vfs.Default, replicas, []runbook.DrillResult{{VM: "db-1", OK: false, At: time.Now().UTC(), Epoch: 11, Detail: "check failed"}}); err != nil {
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
	addr := regexp.MustCompile(`msg=metrics addr=\S+ status_page=(http://\S+/)`)
	var url string
	for deadline := time.Now().Add(20 * time.Second); url == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := addr.FindStringSubmatch(logs.String()); m != nil {
			url = m[1]
		}
	}
	if url == "" {
		t.Fatalf("no status page address logged:\n%s", logs.String())
	}
	for _, path := range []string{"", "status"} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		page := string(b)
		for _, want := range []string{`<title>drsync receiver status</title>`, `id="vm-web-1"`, `id="vm-db-1"`, `<span class="fail">FAILED</span> epoch 11`, "last failover drill FAILED"} {
			if resp.StatusCode != 200 || !strings.Contains(page, want) {
				t.Errorf("GET /%s: %d, the page lacks %s:\n%s", path, resp.StatusCode, want, page)
			}
		}
	}
}
