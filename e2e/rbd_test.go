//go:build ceph && cgo

package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vmspec"
)

// TestReceiverOnRBD replicates a VM's disk, RAM and device state with
// `drsync receive` keeping the replica in a Ceph pool ([storage] backend =
// "rbd"), over several epochs and a SIGKILLed receiver: after each send
// the replica in the pool is byte-exact the source, and after the kill it
// is the previous or the new epoch, then catches up.
func TestReceiverOnRBD(t *testing.T) {
	const diskSize, ramSize = 32 << 20, 16 << 20
	c := testkit.CephCluster(t)
	t.Logf("Ceph cluster up (started in %v)", c.Started.Round(time.Second))
	vm := vmSpec{name: "web-1", disks: []diskSpec{{name: "vda", path: "images/vda.raw", format: "raw"}}, ram: []string{"images/pc.ram"}, dev: "images/devstate.bin"}
	p := newPair(t, []vmSpec{vm})
	cfg, err := os.ReadFile(p.recvCfg)
	if err != nil {
		t.Fatal(err)
	}
	// The storage keys go right after [storage]; the VM's name is the
	// run's own, as the cluster outlives one test.
	rbdKeys := fmt.Sprintf("[storage]\nbackend = \"rbd\"\npool = %q\nceph_conf = %q\nclient = %q\n", c.Pool, c.Conf, c.Client)
	name := fmt.Sprintf("web-%d", time.Now().UnixNano()%1e9)
	cfgText := strings.Replace(string(cfg), "[storage]\n", rbdKeys, 1)
	cfgText = strings.Replace(cfgText, `vms = ["web-1"]`, fmt.Sprintf("vms = [%q]", name), 1)
	p.write("receiver.toml", cfgText)
	p.sendCfg = p.senderConfig("sender.toml", "site-a", p.port, []vmSpec{{name: name, disks: vm.disks, ram: vm.ram, dev: vm.dev}}, "")

	store, closeStore, err := rbdstore.Open(rbdstore.Config{Pool: c.Pool, CephConf: c.Conf, Client: c.Client}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore()

	rng := rand.New(rand.NewPCG(3, 4))
	testkit.SparseFile(t, p.path("images/vda.raw"), diskSize)
	testkit.SparseFile(t, p.path("images/pc.ram"), ramSize)
	scribble := func() {
		testkit.ScribbleFile(t, rng, p.path("images/vda.raw"), diskSize, 40, 64<<10)
		testkit.ScribbleFile(t, rng, p.path("images/pc.ram"), ramSize, 200, 16<<10)
	}
	scribble()
	p.startReceiver()
	t.Logf("receiver started on pool %s", c.Pool)

	// check compares the replica in the pool with the source files.
	check := func(epoch uint64) {
		t.Helper()
		h, err := store.Open(t.Context(), name, replica.OpenOptions{Holder: "the test", LockWait: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		m := h.Manifest()
		if m.Epoch != epoch {
			t.Fatalf("replica in the pool at epoch %d, want %d", m.Epoch, epoch)
		}
		img, err := h.Export(m.Epoch, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			kind      vmspec.TargetKind
			name, src string
		}{{vmspec.KindDisk, "vda", "images/vda.raw"}, {vmspec.KindRAM, "ram0", "images/pc.ram"}} {
			want := mustRead(t, p.path(tc.src))
			te := m.Find(tc.kind, tc.name)
			if te == nil {
				t.Fatalf("epoch %d: no target %s in the manifest", epoch, tc.name)
			}
			f, err := img.OpenTarget(te)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(want))
			_, err = f.ReadAt(got, 0)
			f.Close()
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("epoch %d: %s in the pool differs from the source (%v)", epoch, tc.name, err)
			}
		}
		dev, err := img.DeviceState()
		if err != nil || !bytes.Equal(dev, mustRead(t, p.path("images/devstate.bin"))) {
			t.Fatalf("epoch %d: device state differs (%v)", epoch, err)
		}
		t.Logf("epoch %d: disk, RAM and device state in %s are byte-exact", epoch, store.Where(name))
	}
	send := func(e int) {
		os.WriteFile(p.path("images/devstate.bin"), []byte(fmt.Sprintf("device state of epoch %d", e)), 0o644)
		out := testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
		t.Logf("epoch %d sent: %s", e, lastLine(out))
	}
	for e := 1; e <= 3; e++ {
		send(e)
		check(uint64(e))
		scribble()
	}
	// A receiver killed while an epoch is on its way: the replica is the
	// previous epoch or the new one, and the next send completes it.
	os.WriteFile(p.path("images/devstate.bin"), []byte("device state of epoch 4"), 0o644)
	snd := testkit.Start(t, p.path("send-4.log"), "send", "--once", "--config", p.sendCfg)
	time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond)
	p.rcv.Kill()
	t.Logf("receiver SIGKILLed while epoch 4 was on its way")
	snd.Kill()
	m, err := store.Manifest(name)
	if err != nil || (m.Epoch != 3 && m.Epoch != 4) {
		t.Fatalf("after the kill the replica is at %v (%v), want epoch 3 or 4", m, err)
	}
	t.Logf("after the kill the replica is at epoch %d", m.Epoch)
	p.startReceiver()
	send(5)
	after, err := store.Manifest(name)
	if err != nil || after.Epoch <= m.Epoch {
		t.Fatalf("the send after the restart left the replica at %v (%v)", after, err)
	}
	check(after.Epoch)
}
