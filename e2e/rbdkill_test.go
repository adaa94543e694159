//go:build ceph && cgo

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/vmspec"
)

// rbdReceiver points p's receiver at the test cluster's pool, with the
// [storage] keys given after the backend's, and renames the receiver's VM
// old to name (the cluster outlives one test, so each run names its own).
func rbdReceiver(t *testing.T, p *pair, c *testkit.Ceph, old, name, storage string) {
	t.Helper()
	keys := fmt.Sprintf("[storage]\nbackend = \"rbd\"\npool = %q\nceph_conf = %q\nclient = %q\n%s", c.Pool, c.Conf, c.Client, storage)
	cfg := strings.Replace(string(mustRead(t, p.recvCfg)), "[storage]\n", keys, 1)
	p.write("receiver.toml", strings.Replace(cfg, fmt.Sprintf("vms = [%q]", old), fmt.Sprintf("vms = [%q]", name), 1))
}

// openRBDStore opens the test cluster's pool as a store keeping keep
// recovery points: an opener that finishes an apply a crash interrupted
// prunes points as its own setting says, so it must be the receiver's.
func openRBDStore(t *testing.T, c *testkit.Ceph, keep int, log *slog.Logger) *rbdstore.Store {
	t.Helper()
	store, closeStore, err := rbdstore.Open(rbdstore.Config{Pool: c.Pool, CephConf: c.Conf, Client: c.Client}, keep, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeStore)
	return store
}

// TestStatusAndVerifyOfRBDReceiver: "drsync status" and "drsync verify
// --config" of a receiver keeping its replicas in a Ceph pool read them
// from the pool: status shows the committed epoch, verify passes, and
// finds a block changed behind the replica's back.
func TestStatusAndVerifyOfRBDReceiver(t *testing.T) {
	const diskSize, ramSize = 16 << 20, 8 << 20
	c := testkit.CephCluster(t)
	t.Logf("Ceph cluster up (started in %v)", c.Started.Round(time.Second))
	vm := vmSpec{name: "web-1", disks: []diskSpec{{name: "vda", path: "images/vda.raw", format: "raw"}}, ram: []string{"images/pc.ram"}, dev: "images/devstate.bin"}
	p := newPair(t, []vmSpec{vm})
	name := fmt.Sprintf("sv-%d", time.Now().UnixNano()%1e9)
	rbdReceiver(t, p, c, "web-1", name, "")
	p.sendCfg = p.senderConfig("sender.toml", "site-a", p.port, []vmSpec{{name: name, disks: vm.disks, ram: vm.ram, dev: vm.dev}}, "")
	rng := rand.New(rand.NewPCG(5, 6))
	testkit.SparseFile(t, p.path("images/vda.raw"), diskSize)
	testkit.SparseFile(t, p.path("images/pc.ram"), ramSize)
	os.WriteFile(p.path("images/devstate.bin"), []byte("device state"), 0o644)
	p.startReceiver()
	for e := 1; e <= 2; e++ {
		testkit.ScribbleFile(t, rng, p.path("images/vda.raw"), diskSize, 20, 64<<10)
		testkit.ScribbleFile(t, rng, p.path("images/pc.ram"), ramSize, 50, 16<<10)
		testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	}
	t.Logf("2 epochs sent into pool %s", c.Pool)

	var rows []struct {
		VM    string `json:"vm"`
		Epoch uint64 `json:"epoch"`
	}
	out := testkit.MustRun(t, "status", "--json", "--config", p.recvCfg)
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 || rows[0].VM != name || rows[0].Epoch != 2 {
		t.Fatalf("status --json of the RBD receiver: %v\n%s", err, out)
	}
	t.Logf("drsync status:\n%s", testkit.MustRun(t, "status", "--config", p.recvCfg))

	out = testkit.MustRun(t, "verify", "--config", p.recvCfg, "--vm", name)
	if !strings.Contains(out, "rbd:"+c.Pool+"/"+name) || !strings.Contains(out, "epoch 2") || !strings.Contains(out, "Result: OK") {
		t.Fatalf("verify of the RBD replica:\n%s", out)
	}
	t.Logf("drsync verify --config --vm:\n%s", out)
	var view struct {
		OK    bool   `json:"ok"`
		Epoch uint64 `json:"epoch"`
	}
	out = testkit.MustRun(t, "verify", "--json", "--config", p.recvCfg, "--vm", name)
	if err := json.Unmarshal([]byte(out), &view); err != nil || !view.OK || view.Epoch != 2 {
		t.Fatalf("verify --json: %v\n%s", err, out)
	}
	if code, out := testkit.Run(t, "verify", "--config", p.recvCfg, "--vm", "nobody"); code != 1 || !strings.Contains(out, "not a replica") {
		t.Errorf("verify of a VM with no replica in the pool: exit %d\n%s", code, out)
	}

	// A block changed in the pool behind the receiver's back.
	store := openRBDStore(t, c, 0, nil)
	m, err := store.Manifest(name)
	if err != nil {
		t.Fatal(err)
	}
	te := m.Find(vmspec.KindDisk, "vda")
	im, err := store.Pool.OpenImage(name+"."+te.File, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.WriteAt([]byte("not what the sender sent"), 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	im.Close()
	code, out := testkit.Run(t, "verify", "--config", p.recvCfg, "--vm", name)
	if code != 3 || !strings.Contains(out, "MISMATCH") {
		t.Fatalf("verify after a block changed in the pool: exit %d, want 3\n%s", code, out)
	}
	t.Logf("after a block changed in the pool, verify exits %d:\n%s", code, out)
}

// TestRBDReceiverKilled20Times replicates the running test guest into a
// Ceph pool with "drsync send" running continuously, and SIGKILLs the
// receiver 20 times at random moments of the epochs (while items arrive,
// while an epoch is committed and applied, between epochs). After each
// kill, with the sender frozen, the test opens the replica through the
// store as a failover would (taking the dead receiver's lock, finishing
// what it left): it must be exactly the epoch before the one the sender
// was in, or that one (its images match the block tables
// the sender's states were checked against: the store's Verify; the
// workload's records on its disk are whole and never go back). Then the
// receiver restarts, the sender resumes, and the next kill comes after
// the next epoch is acknowledged, so replication carries on. At
// the end every retained recovery point reads back to its manifest's
// digests.
func TestRBDReceiverKilled20Times(t *testing.T) {
	kills := 20
	if n, err := strconv.Atoi(os.Getenv("DRSYNC_E2E_RBD_KILLS")); err == nil && n > 0 {
		kills = n // a shorter run while working on it
	}
	c := testkit.CephCluster(t)
	t.Logf("Ceph cluster up (started in %v)", c.Started.Round(time.Second))
	// A small, slowly dirtying guest: each epoch's apply into the single
	// test OSD takes seconds, and the kills need epochs to land in.
	vm, _ := liveGuest(t, 128, map[string]string{"dirty_mib": "4", "dirty_rate_kib": "64"})
	name := fmt.Sprintf("lg-%d", time.Now().UnixNano()%1e9)
	spec := vmSpec{name: name, qmp: vm.QMPSocket, extra: `min_interval = "1s"`,
		disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}}
	p := newPair(t, []vmSpec{spec})
	rbdReceiver(t, p, c, name, name, "keep_points = 1\n")
	var recLog bytes.Buffer
	store := openRBDStore(t, c, 1, slog.New(slog.NewTextHandler(&recLog, nil)))
	p.startReceiver()
	snd := testkit.Start(t, p.path("sender.log"), "send", "--config", p.sendCfg)
	defer func() {
		if t.Failed() {
			t.Logf("sender log:\n%s\nlast receiver log:\n%s", tailLines(snd.Log(), 40), tailLines(p.rcv.Log(), 40))
		}
	}()
	acked := func() uint64 {
		var st struct{ Epoch uint64 }
		b, err := os.ReadFile(p.path("state/" + name + "/status.json"))
		if err != nil || json.Unmarshal(b, &st) != nil {
			return 0
		}
		return st.Epoch
	}
	waitAcked := func(after uint64) uint64 {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			if e := acked(); e > after {
				return e
			}
			if time.Now().After(deadline) {
				t.Fatalf("no epoch after %d committed within 2 minutes", after)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	start := time.Now()
	first := waitAcked(0)
	t.Logf("epoch %d committed into %s in %v (sender running continuously, min_interval 1s)", first, store.Where(name), time.Since(start).Round(100*time.Millisecond))
	// An epoch here takes several seconds from its cut to its ack, most
	// of it the apply into the single test OSD; kills at up to 6 s after
	// an ack land in the next cut, its transfer, its apply or between
	// epochs.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	action := regexp.MustCompile(`msg="journal recovery" .*action=(\w+)`)
	began := regexp.MustCompile(`msg=epoch vm=` + name + ` epoch=(\d+) `)
	phases := map[string]int{}
	lastEpoch, lastRecord := first, uint64(0)
	for k := 1; k <= kills; k++ {
		// An epoch after the one last checked commits first: replication
		// goes on between kills (and the sender's retry backoff, which
		// grows with each failure until an epoch commits, stays short).
		committed := waitAcked(lastEpoch)
		delay := time.Duration(rng.IntN(6000)) * time.Millisecond
		time.Sleep(delay)
		p.rcv.Kill()
		snd.Signal(syscall.SIGSTOP)
		// The sender starts epoch n only once n-1 is committed (acknowledged,
		// or reported committed when it reconnects), so the replica must
		// be n-1 or n.
		begun := began.FindAllStringSubmatch(snd.Log(), -1)
		n, _ := strconv.ParseUint(begun[len(begun)-1][1], 10, 64)

		recLog.Reset()
		t0 := time.Now()
		h, err := store.Open(t.Context(), name, replica.OpenOptions{Holder: "the test", LockWait: 60 * time.Second})
		if err != nil {
			t.Fatalf("kill %d: open the replica: %v", k, err)
		}
		opened := time.Since(t0)
		m := h.Manifest()
		recs := replicaRecords(t, h)
		h.Close()
		phase := "between epochs"
		if got := action.FindStringSubmatch(recLog.String()); got != nil {
			phase = map[string]string{"resume": "while items arrived", "replay": "while an epoch was applied", "discard": "after an apply, removing its journal"}[got[1]]
		}
		phases[phase]++
		if m.Epoch != n-1 && m.Epoch != n {
			t.Fatalf("kill %d: the replica is at epoch %d; the sender had begun epoch %d, so it must be %d or %d", k, m.Epoch, n, n-1, n)
		}
		if m.Epoch < lastEpoch || recs.Last < lastRecord {
			t.Fatalf("kill %d: went back: epoch %d -> %d, records up to %d -> %d", k, lastEpoch, m.Epoch, lastRecord, recs.Last)
		}
		rep, err := store.Verify(name)
		if err != nil || !rep.OK() || rep.Epoch != m.Epoch {
			t.Fatalf("kill %d: verify of epoch %d: %v %+v", k, m.Epoch, err, rep)
		}
		t.Logf("kill %2d: %4dms after epoch %d's ack, %s: replica at epoch %d (sender in epoch %d), verified, records %d..%d; opened in %v",
			k, delay.Milliseconds(), committed, phase, m.Epoch, n, recs.First, recs.Last, opened.Round(100*time.Millisecond))
		lastEpoch, lastRecord = m.Epoch, recs.Last
		p.startReceiver()
		snd.Signal(syscall.SIGCONT)
	}
	final := waitAcked(lastEpoch)
	snd.Signal(syscall.SIGTERM)
	if code, err := snd.Wait(60 * time.Second); code != 0 || err != nil {
		t.Fatalf("sender exit %d %v", code, err)
	}
	t.Logf("%d kills in %v; replication went on from epoch %d to %d; kill points: %v", kills, time.Since(start).Round(time.Second), first, final, phases)

	// Every retained point, the committed epoch last, reads back to its
	// manifest's digests.
	h, err := store.Open(t.Context(), name, replica.OpenOptions{Holder: "the test", LockWait: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	pts, err := store.Points(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 2 {
		t.Errorf("%d recovery points retained, want 2 (keep_points = 1, and the committed epoch)", len(pts))
	}
	for _, pt := range pts {
		checkPoint(t, store, h, pt.Manifest)
	}
	if phases["while items arrived"]+phases["while an epoch was applied"] == 0 {
		t.Errorf("no kill fell inside an epoch: %v", phases)
	}
}

// replicaRecords checks the workload's records on the committed epoch's
// vda, read through the store.
func replicaRecords(t *testing.T, h replica.Handle) guest.Records {
	t.Helper()
	m := h.Manifest()
	img, err := h.Export(m.Epoch, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	te := m.Find(vmspec.KindDisk, "vda")
	if te == nil {
		t.Fatalf("epoch %d has no disk vda", m.Epoch)
	}
	f, err := img.OpenTarget(te)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := guest.VerifyRecords(f, te.Size)
	if err != nil {
		t.Fatalf("epoch %d: the workload's records: %v", m.Epoch, err)
	}
	return recs
}

// checkPoint reads every image of the point m back through h and checks it
// against m: block-table digests and the device state's hash.
func checkPoint(t *testing.T, store *rbdstore.Store, h replica.Handle, m *replica.Manifest) {
	t.Helper()
	scratch := fmt.Sprintf("check-%d-%d", m.Epoch, time.Now().UnixNano()%1e9)
	scratchCopy := m.Epoch != h.Manifest().Epoch
	img, err := h.Export(m.Epoch, scratch, nil)
	if err != nil {
		t.Fatalf("export epoch %d: %v", m.Epoch, err)
	}
	defer func() {
		if !scratchCopy {
			return
		}
		for _, te := range m.Targets {
			store.Pool.RemoveImage(scratch + "." + te.File)
		}
		if d := m.DeviceState; d != nil {
			store.Pool.RemoveObject(scratch + "." + d.File)
		}
	}()
	for _, te := range m.Targets {
		f, err := img.OpenTarget(&te)
		if err != nil {
			t.Fatal(err)
		}
		tab := blockhash.NewZero(te.Size, te.BlockSize)
		buf := make([]byte, te.BlockSize)
		for i := range tab.Hashes {
			n := tab.BlockLen(int64(i))
			if _, err := f.ReadAt(buf[:n], int64(i)*int64(te.BlockSize)); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			tab.Hashes[i] = blockhash.Hash(buf[:n])
		}
		f.Close()
		if tab.Digest() != te.Digest {
			t.Errorf("epoch %d: %s %s reads back with digest %016x, its manifest says %016x", m.Epoch, te.Kind, te.Name, tab.Digest(), te.Digest)
		}
	}
	if d := m.DeviceState; d != nil {
		b, err := img.DeviceState()
		if err != nil || int64(len(b)) != d.Size || blockhash.Hash(b) != d.Hash {
			t.Errorf("epoch %d: device state differs from its manifest (%v)", m.Epoch, err)
		}
	}
	t.Logf("recovery point epoch %d: %d images and the device state read back to their manifest's digests", m.Epoch, len(m.Targets))
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
