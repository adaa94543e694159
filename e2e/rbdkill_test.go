//go:build ceph && cgo

package e2e

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/testkit"
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

func openRBDStore(t *testing.T, c *testkit.Ceph, log *slog.Logger) *rbdstore.Store {
	t.Helper()
	store, closeStore, err := rbdstore.Open(rbdstore.Config{Pool: c.Pool, CephConf: c.Conf, Client: c.Client}, 0, log)
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
	store := openRBDStore(t, c, nil)
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
