package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/drsync/drsync/testkit/hosttools"

	"github.com/drsync/drsync/testkit"
)

const (
	bigDisk = 1 << 30
	bigRAM  = 256 << 20
)

// TestRawDiskAndRAMOverQUIC replicates a 1 GiB sparse raw disk (plus a
// second, small one) and a 256 MiB RAM image through the real CLI over loopback QUIC for five
// epochs with random writes in between; after each, the replica equals the
// source (disk by qemu-img compare, RAM and device state by hash) and
// drsync verify passes. It runs over one QUIC connection and striped over
// four.
func TestRawDiskAndRAMOverQUIC(t *testing.T) {
	needQemu(t)
	for _, conns := range []int{1, 4} {
		t.Run(fmt.Sprintf("connections=%d", conns), func(t *testing.T) { rawDiskAndRAM(t, conns) })
	}
}

func rawDiskAndRAM(t *testing.T, conns int) {
	vm := vmSpec{name: "web-1", disks: []diskSpec{{name: "vda", path: "images/vda.raw", format: "raw"}, {name: "vdb", path: "images/vdb.raw", format: "raw"}}, ram: []string{"images/pc.ram"}, dev: "images/devstate.bin"}
	p := newPair(t, []vmSpec{vm}, fmt.Sprintf("connections = %d", conns))
	rng := rand.New(rand.NewPCG(1, 1))
	testkit.SparseFile(t, p.path("images/vdb.raw"), 64<<20)
	testkit.SparseFile(t, p.path("images/vda.raw"), bigDisk)
	testkit.SparseFile(t, p.path("images/pc.ram"), bigRAM)
	testkit.ScribbleFile(t, rng, p.path("images/vda.raw"), bigDisk, 200, 256<<10)
	testkit.ScribbleFile(t, rng, p.path("images/pc.ram"), bigRAM, 2000, 16<<10)
	p.startReceiver()
	for e := 1; e <= 5; e++ {
		os.WriteFile(p.path("images/devstate.bin"), []byte(fmt.Sprintf("device state of epoch %d", e)), 0o644)
		out := testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
		t.Logf("epoch %d: %s", e, lastLine(out))
		if m := p.manifest("web-1"); m.Epoch != uint64(e) {
			t.Fatalf("replica at epoch %d after send %d", m.Epoch, e)
		}
		qemuCompare(t, p.path("images/vda.raw"), "raw", p.replicaFile("web-1", "disk", "vda"))
		qemuCompare(t, p.path("images/vdb.raw"), "raw", p.replicaFile("web-1", "disk", "vdb"))
		if a, b := testkit.FileHash(t, p.path("images/pc.ram"), -1), testkit.FileHash(t, p.replicaFile("web-1", "ram", "ram0"), -1); a != b {
			t.Fatalf("epoch %d: RAM differs (%s vs %s)", e, a, b)
		}
		if a, b := testkit.FileHash(t, p.path("images/devstate.bin"), -1), testkit.FileHash(t, p.replicas+"/web-1/"+p.manifest("web-1").DeviceState.File, -1); a != b {
			t.Fatalf("epoch %d: device state differs", e)
		}
		p.verify("web-1")
		testkit.ScribbleFile(t, rng, p.path("images/vda.raw"), bigDisk, 40, 256<<10)
		testkit.ScribbleFile(t, rng, p.path("images/pc.ram"), bigRAM, 500, 16<<10)
		testkit.ScribbleFile(t, rng, p.path("images/vdb.raw"), 64<<20, 10, 64<<10)
	}
	st := testkit.MustRun(t, "status", "--config", p.sendCfg)
	t.Logf("status:\n%s", st)
}

// TestQcow2WithBackingFile replicates a qcow2 overlay whose backing file
// holds most of the data; the replica is the flattened disk.
func TestQcow2WithBackingFile(t *testing.T) {
	needQemu(t)
	vm := vmSpec{name: "db-1", disks: []diskSpec{{name: "vda", path: "images/overlay.qcow2", format: "auto"}}}
	p := newPair(t, []vmSpec{vm})
	qemu := func(args ...string) { hosttools.Run(t, args[0], args[1:]...) }
	base, overlay := p.path("images/base.qcow2"), p.path("images/overlay.qcow2")
	qemu("qemu-img", "create", "-q", "-f", "qcow2", base, "256M")
	qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 16M", "-c", "write -P 0x22 100M 8M", "-c", "write -z 4M 1M", base)
	qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay)
	qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 8M 2M", overlay)
	p.startReceiver()
	for e := 1; e <= 3; e++ {
		out := testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
		t.Logf("epoch %d: %s", e, lastLine(out))
		qemuCompare(t, overlay, "qcow2", p.replicaFile("db-1", "disk", "vda"))
		p.verify("db-1")
		off := 20 + 30*e
		qemu("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x%02x %dM 3M", 0x40+e, off), "-c", fmt.Sprintf("write -z %dM 1M", 100+e), overlay)
	}
}

func lastLine(s string) string {
	for len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			return s[i+1:]
		}
	}
	return s
}
