package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/udprelay"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// liveGuest boots the protected test guest (guest.Protected).
func liveGuest(t *testing.T, memMiB int, args map[string]string) (*guest.VM, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a guest")
	}
	return guest.Protected(t, memMiB, args)
}

var liveDisks = []livecut.Disk{{Name: "vda", Node: "disk0"}, {Name: "vdb", Node: "disk1"}}

// witness records, for each epoch, what the replica must equal: a copy of
// every disk's point-in-time view made by QEMU's own NBD client, and the
// RAM and device state of the epoch's migration stream.
type witness struct {
	t     *testing.T
	src   *livecut.Source
	dir   string
	cuts  int
	disks map[string]string // disk name → copy of its view at the last cut
	ram   map[string]uint64 // RAM block → hash of its content in the stream
	dev   []byte
	stats livecut.CutStats
}

func (w *witness) Snapshot(ctx context.Context) (*sender.Snapshot, error) {
	snap, err := w.src.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	w.cuts++
	w.stats = w.src.LastCut()
	w.disks, w.ram, w.dev = map[string]string{}, map[string]uint64{}, bytes.Clone(snap.DeviceState)
	for i, d := range liveDisks {
		copyPath := filepath.Join(w.dir, fmt.Sprintf("pit-%d-%s.raw", w.cuts, d.Name))
		uri := fmt.Sprintf("nbd+unix:///%s?socket=%s", w.stats.Exports[i], w.stats.NBDSocket)
		hosttools.Run(w.t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, copyPath)
		w.disks[d.Name] = copyPath
	}
	for _, tg := range snap.Targets {
		if tg.Kind == vmspec.KindRAM {
			b := make([]byte, tg.Size)
			tg.Reader.ReadAt(b, 0)
			w.ram[tg.Name] = xxhash.Sum64(b)
		}
	}
	return snap, nil
}

func replicaTarget(t *testing.T, dir, kind, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "MANIFEST"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := replica.ParseManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range m.Targets {
		if tg.Kind == kind && tg.Name == name {
			return filepath.Join(dir, tg.File)
		}
	}
	t.Fatalf("replica has no %s %s", kind, name)
	return ""
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestLiveGuestTenEpochs replicates a running guest for ten epochs. After
// each, the replica's disks equal QEMU's own copy of the point-in-time view
// at the cut, its RAM and device state equal the epoch's migration stream,
// and the workload's records on the replica are whole and contiguous.
// (The guest's liveness is measured by TestLiveContinuous, where sender and
// receiver run as their own processes: here they share the test's process
// with the serial console reader, whose timestamps their work delays.)
func TestLiveGuestTenEpochs(t *testing.T) {
	// The workload also reads its disk, so the guest's page cache holds
	// disk data: those memory pages travel as references.
	vm, dir := liveGuest(t, 256, map[string]string{"read": "1"})
	ctx := context.Background()
	rcv, err := receiver.New(receiver.Options{Root: filepath.Join(dir, "replicas"), FS: vfs.Default, AckBytes: 4 << 20, Now: time.Now,
		Authorize: func(receiver.Peer, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	src, err := livecut.New(livecut.Options{QMPSocket: vm.QMPSocket, WorkDir: filepath.Join(dir, "work"), Now: time.Now, Disks: liveDisks,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	w := &witness{t: t, src: src, dir: dir}
	snd, err := sender.New(sender.Options{VM: "guest-1", Source: w, Dialer: testkit.PipeDialer(rcv, receiver.Peer{Fingerprint: "sha256:aa"}),
		Store: sender.Store{FS: vfs.Default, Dir: filepath.Join(dir, "state")}, Compression: wire.CompressFast, Now: time.Now, Dedup: true})
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	repl := filepath.Join(dir, "replicas", "guest-1")
	var refs int64
	var pauses []time.Duration
	var lastRecords uint64
	t.Logf("%5s %9s %9s %12s %12s %12s %7s %8s %22s", "epoch", "pause", "downtime", "data", "wire", "qemu stream", "ratio", "records", "RAM pages data/ref/0")
	for e := 1; e <= 10; e++ {
		res, err := snd.RunEpoch(ctx)
		if err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
		for _, d := range liveDisks {
			qemuCompare(t, w.disks[d.Name], "raw", replicaTarget(t, repl, "disk", d.Name))
		}
		for name, h := range w.ram {
			if got := testkit.FileHash(t, replicaTarget(t, repl, "ram", name), -1); got != fmt.Sprintf("%016x", h) {
				t.Fatalf("epoch %d: replica RAM %s differs from the migration stream", e, name)
			}
		}
		f, err := os.Open(replicaTarget(t, repl, "disk", "vda"))
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		recs, err := guest.VerifyRecords(f, st.Size())
		f.Close()
		if err != nil {
			t.Fatalf("epoch %d: the replica's records: %v", e, err)
		}
		if recs.Last < lastRecords {
			t.Fatalf("epoch %d: records went back from %d to %d", e, lastRecords, recs.Last)
		}
		lastRecords = recs.Last
		pauses = append(pauses, res.Pause)
		t.Logf("%5d %9v %9v %12d %12d %12d %6.3f %8d %22s", e, res.Pause.Round(100*time.Microsecond), res.HypervisorDowntime, res.DataBytes, res.WireBytes,
			w.stats.StreamBytes, float64(res.WireBytes)/float64(w.stats.StreamBytes), recs.Last,
			fmt.Sprintf("%d/%d/%d", res.RAMDataPages, res.RAMRefPages, res.RAMZeroPages))
		refs += res.RAMRefPages
		if e > 1 && res.WireBytes*4 > uint64(w.stats.StreamBytes) {
			t.Errorf("epoch %d: %d bytes on the wire, more than a quarter of QEMU's own %d-byte stream", e, res.WireBytes, w.stats.StreamBytes)
		}
		if e == 1 && res.Base != "fresh" || e > 1 && res.Base != "committed" {
			t.Errorf("epoch %d: base %s", e, res.Base)
		}
	}
	testkit.MustRun(t, "verify", "--replica", repl)
	t.Logf("guest pause per epoch: median %v, max %v", median(pauses).Round(100*time.Microsecond), slices.Max(pauses).Round(100*time.Microsecond))
	if refs == 0 {
		t.Error("no memory page travelled as a reference, though the guest's page cache holds disk data")
	}
}

// livePair is a DR pair protecting a running test guest through the CLI.
func livePair(t *testing.T, vm *guest.VM, extra string) *pair {
	t.Helper()
	spec := vmSpec{name: "guest-1", qmp: vm.QMPSocket, extra: extra,
		disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}}
	p := newPair(t, []vmSpec{spec})
	p.startReceiver()
	return p
}

// checkReplicaRecords verifies the replica and the workload's records on it.
func (p *pair) checkReplicaRecords(vm string) guest.Records {
	p.t.Helper()
	p.verify(vm)
	path := p.replicaFile(vm, "disk", "vda")
	f, err := os.Open(path)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	recs, err := guest.VerifyRecords(f, st.Size())
	if err != nil {
		p.t.Fatalf("replica records: %v", err)
	}
	return recs
}

// TestLiveSenderKilled kills the sender at random points of live epochs.
// The guest runs on (or is resumed by the next sender), the restarted
// sender removes what its predecessor left in QEMU and continues, and the
// replica is always a whole committed epoch.
func TestLiveSenderKilled(t *testing.T) {
	vm, _ := liveGuest(t, 256, nil)
	p := livePair(t, vm, `min_interval = "1s"`)
	start := time.Now()
	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	prev := p.checkReplicaRecords("guest-1")
	// Later epochs cross a slow link, so a kill shortly after a cut lands
	// while the cut is open in QEMU.
	relay, err := udprelay.New("127.0.0.1:0", p.receiverAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	relay.SetRate(8 << 20)
	spec := vmSpec{name: "guest-1", qmp: vm.QMPSocket, extra: `min_interval = "1s"`, disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}}
	// A short idle timeout lets the receiver drop a killed sender's
	// connection (and the replica it holds) quickly.
	slow := p.senderConfig("sender-slow.toml", "site-a", relay.Addr().(*net.UDPAddr).Port, []vmSpec{spec}, `idle_timeout = "2s"`)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	cleaned := 0
	for round := 1; round <= 4; round++ {
		snd := testkit.Start(t, p.path(fmt.Sprintf("sender-%d.log", round)), "send", "--config", slow, "--log-level", "debug")
		if !snd.WaitLog("msg=cut ", 60*time.Second) {
			t.Fatalf("round %d: no cut:\n%s", round, snd.Log())
		}
		// The cut stays open in QEMU until its epoch is sent, about 200 ms
		// at this rate. Kills up to 500 ms after it landed inside in 10 of
		// 16 (four runs), and in none of the four of one full check's run,
		// failing the check below; up to 150 ms, in 15 of 16.
		time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond)
		snd.Kill()
		before := p.manifest("guest-1").Epoch
		p.verify("guest-1")
		out := testkit.MustRun(t, "send", "--once", "--config", slow)
		if testing.Verbose() {
			t.Logf("round %d: restarted sender:\n%s", round, out)
		}
		if strings.Contains(out, "removing what an earlier sender left") {
			cleaned++
		}
		recs := p.checkReplicaRecords("guest-1")
		after := p.manifest("guest-1").Epoch
		if after <= before || recs.Last < prev.Last {
			t.Fatalf("round %d: epoch %d -> %d, records %d -> %d", round, before, after, prev.Last, recs.Last)
		}
		t.Logf("round %d: killed at epoch %d; the restarted sender committed epoch %d; replica records %d..%d", round, before, after, recs.First, recs.Last)
		prev = recs
	}
	t.Logf("%d of 4 restarted senders removed leftovers of a killed one", cleaned)
	if cleaned == 0 {
		t.Error("no restarted sender found leftovers to clean; the kills all fell between epochs")
	}
	// The guest ran all along.
	n := len(vm.Ticks())
	if _, err := vm.WaitTicks(n+10, 30*time.Second); err != nil {
		t.Fatalf("the guest no longer runs: %v", err)
	}
	t.Logf("longest gap between serial ticks: %v", guest.MaxGap(vm.Ticks(), start, time.Now()))
}

// TestLiveErrors: what an operator sees when the VM is not there, a disk
// node is misnamed, or the VM exits during an epoch.
func TestLiveErrors(t *testing.T) {
	vm, dir := liveGuest(t, 128, nil)
	p := livePair(t, vm, "")

	bad := p.senderConfig("nosocket.toml", "site-a", p.port, []vmSpec{{name: "guest-1", qmp: filepath.Join(dir, "nope.sock"),
		disks: []diskSpec{{name: "vda", node: "disk0"}}}}, "")
	code, out := testkit.Run(t, "send", "--once", "--retries", "0", "--config", bad)
	if code != 1 || !strings.Contains(out, "nope.sock does not exist") {
		t.Errorf("missing QMP socket: exit %d\n%s", code, out)
	}

	bad = p.senderConfig("badnode.toml", "site-a", p.port, []vmSpec{{name: "guest-1", qmp: vm.QMPSocket,
		disks: []diskSpec{{name: "vda", node: "disk9"}}}}, "")
	code, out = testkit.Run(t, "send", "--once", "--config", bad)
	if code != 2 || !strings.Contains(out, `node "disk9" is not in the VM`) || !strings.Contains(out, "disk0") {
		t.Errorf("unknown disk node: exit %d\n%s", code, out)
	}

	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	committed := p.manifest("guest-1").Epoch
	snd := testkit.Start(t, p.path("sender-exit.log"), "send", "--config", p.sendCfg, "--log-level", "debug")
	if !snd.WaitLog("msg=cut ", 60*time.Second) {
		t.Fatalf("no cut:\n%s", snd.Log())
	}
	vm.Kill()
	if !snd.WaitLog("went away", 30*time.Second) {
		t.Fatalf("the sender did not report the VM's exit:\n%s", snd.Log())
	}
	snd.Kill()
	p.verify("guest-1")
	if e := p.manifest("guest-1").Epoch; e < committed {
		t.Fatalf("replica went back from epoch %d to %d", committed, e)
	}
	t.Logf("after the VM exited the replica is at epoch %d; the sender said:\n%s", p.manifest("guest-1").Epoch, grepLines(snd.Log(), "went away", 2))
}

func grepLines(s, substr string, n int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) && len(out) < n {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestLiveContinuous runs "drsync send" continuously against the running
// guest. The guest's serial ticks (every 50 ms) never stop for much longer
// than the longest guest pause, and "drsync status" reports the pauses.
func TestLiveContinuous(t *testing.T) {
	vm, _ := liveGuest(t, 256, nil)
	p := livePair(t, vm, `min_interval = "1s"`)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := l.Addr().String()
	l.Close()
	p.write("sender.toml", fmt.Sprintf("metrics = %q\n", metricsAddr)+string(mustRead(t, p.sendCfg)))
	start := time.Now()
	snd := testkit.Start(t, p.path("sender.log"), "send", "--config", p.sendCfg)
	deadline := time.Now().Add(3 * time.Minute)
	for p.senderEpochs("guest-1") < 12 {
		if time.Now().After(deadline) {
			t.Fatalf("12 epochs did not commit in time:\n%s", snd.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
	end := time.Now()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`drsync_sender_rpo_lag_seconds{vm="guest-1"}`, `drsync_sender_guest_pause_seconds_count{vm="guest-1"}`,
		`drsync_sender_epoch_interval_seconds{vm="guest-1"}`, `drsync_sender_goodput_bytes_per_second{vm="guest-1"}`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	snd.Signal(syscall.SIGTERM)
	if code, err := snd.Wait(30 * time.Second); code != 0 || err != nil {
		t.Fatalf("sender exit %d %v:\n%s", code, err, snd.Log())
	}
	recs := p.checkReplicaRecords("guest-1")
	var rows []struct {
		GuestPause *struct {
			LastMS   float64 `json:"last_ms"`
			MedianMS float64 `json:"median_ms"`
			MaxMS    float64 `json:"max_ms"`
			Epochs   int     `json:"epochs"`
		} `json:"guest_pause"`
	}
	if err := json.Unmarshal([]byte(testkit.MustRun(t, "status", "--json", "--config", p.sendCfg)), &rows); err != nil || len(rows) != 1 || rows[0].GuestPause == nil {
		t.Fatalf("status: %v %+v", err, rows)
	}
	gp := rows[0].GuestPause
	gap := guest.MaxGap(vm.Ticks(), start, end)
	t.Logf("%d epochs; guest pause median %.1f ms, max %.1f ms; longest gap between serial ticks %v; replica records %d..%d",
		gp.Epochs, gp.MedianMS, gp.MaxMS, gap.Round(time.Millisecond), recs.First, recs.Last)
	t.Logf("drsync status:\n%s", testkit.MustRun(t, "status", "--config", p.sendCfg))
	var rrows []struct {
		HotSetBytes *int64 `json:"hot_set_bytes"`
	}
	if err := json.Unmarshal([]byte(testkit.MustRun(t, "status", "--json", "--config", p.recvCfg)), &rrows); err != nil || len(rrows) != 1 || rrows[0].HotSetBytes == nil || *rrows[0].HotSetBytes <= 0 {
		t.Errorf("receiver status has no hot set: %v %+v", err, rrows)
	} else {
		t.Logf("receiver keeps %d KiB of hot guest pages pinned:\n%s", *rrows[0].HotSetBytes>>10, testkit.MustRun(t, "status", "--config", p.recvCfg))
	}
	// Ticks are 50 ms apart; TCG on a busy 2-core host adds jitter.
	if limit := time.Duration(gp.MaxMS*float64(time.Millisecond)) + 250*time.Millisecond; gap > limit {
		t.Errorf("the guest's ticks stopped for %v, more than the longest pause plus jitter (%v)", gap, limit)
	}
}

// senderEpochs is how many epochs the sender's status counts.
func (p *pair) senderEpochs(vm string) int {
	var st struct{ Epochs int }
	b, err := os.ReadFile(filepath.Join(p.dir, "state", vm, "status.json"))
	if err != nil || json.Unmarshal(b, &st) != nil {
		return 0 // not written yet, or being replaced
	}
	return st.Epochs
}
