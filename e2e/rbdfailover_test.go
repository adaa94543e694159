//go:build ceph && cgo

package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/takeover"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
)

// rbdPoolState lists the images of a VM's replica in the pool and their
// snapshots, a protected one marked "+".
func rbdPoolState(t *testing.T, p rbd.Pool, vm string) string {
	t.Helper()
	names, err := p.ListImages()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		if !strings.HasPrefix(n, vm+".") {
			continue
		}
		im, err := p.OpenImage(n, "")
		if err != nil {
			t.Fatal(err)
		}
		snaps, err := im.Snaps()
		im.Close()
		if err != nil {
			t.Fatal(err)
		}
		s := n + "["
		for _, sn := range snaps {
			s += " " + sn.Name
			if sn.Protected {
				s += "+"
			}
		}
		out = append(out, s+" ]")
	}
	return strings.Join(out, " ")
}

// rbdDigest is the block table digest of an image (at snap) in the pool.
func rbdDigest(t *testing.T, p rbd.Pool, name, snap string, size int64, bs int) uint64 {
	t.Helper()
	im, err := p.OpenImage(name, snap)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	tab := blockhash.NewZero(size, bs)
	buf := make([]byte, bs)
	for i := range tab.Hashes {
		n := min(int64(bs), size-int64(i)*int64(bs))
		if _, err := im.ReadAt(buf[:n], int64(i)*int64(bs)); err != nil {
			t.Fatal(err)
		}
		tab.Hashes[i] = blockhash.Hash(buf[:n])
	}
	return tab.Digest()
}

// TestFailoverFromRBD: the live test guest is replicated by `drsync
// receive` into a Ceph pool ([storage] backend = "rbd", keep_points) for
// several epochs. A drill runs the runbook on clones and leaves the pool
// as it found it (no clone, no snapshot, no protected snapshot) and the
// replica unfenced. Then the protected site is lost and the runbook fails
// the guest over to an older recovery point: the guest continues from
// that point's cut with its memory (counter and disk records), on clones
// QEMU writes through its rbd driver; the untouched disk is byte-exact
// the point; and the sender is refused from then on.
func TestFailoverFromRBD(t *testing.T) {
	c := testkit.CephCluster(t)
	t.Logf("Ceph cluster up (started in %v)", c.Started.Round(time.Second))
	src, _ := liveGuest(t, 256, nil)
	p := livePair(t, src, "")
	// The VM's name is the run's own, as the cluster outlives one test.
	name := fmt.Sprintf("guest-%d", time.Now().UnixNano()%1e9)
	rename := func(file string) {
		p.write(file, strings.ReplaceAll(string(mustRead(t, p.path(file))), `"guest-1"`, fmt.Sprintf("%q", name)))
	}
	p.rcv.Kill()
	rbdKeys := fmt.Sprintf("[storage]\nbackend = \"rbd\"\npool = %q\nceph_conf = %q\nclient = %q\nkeep_points = 3\n", c.Pool, c.Conf, c.Client)
	p.write("receiver.toml", strings.Replace(string(mustRead(t, p.recvCfg)), "[storage]\n", rbdKeys, 1))
	rename("receiver.toml")
	rename("sender.toml")
	p.startReceiver()
	t.Logf("receiver on pool %s, VM %s", c.Pool, name)
	store, closeStore, err := rbdstore.Open(rbdstore.Config{Pool: c.Pool, CephConf: c.Conf, Client: c.Client}, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeStore) // after the cleanup below, which uses the store

	cuts := map[uint64]time.Time{}
	for range 4 {
		out := testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
		m, err := store.Manifest(name)
		if err != nil {
			t.Fatal(err)
		}
		cuts[m.Epoch] = m.Cut
		t.Logf("epoch %d replicated into the pool: %s", m.Epoch, lastLine(out))
		time.Sleep(time.Second)
	}

	serial := p.path("dr-serial.log")
	rbPath := p.runbookFile("runbook.toml", p.recvCfg, serial, "")
	rename("runbook.toml")
	t.Cleanup(func() {
		killDRVMs(p)
		time.Sleep(time.Second)
		store.RemoveClones(name, takeover.CloneFailover)
	})

	// A drill: clones, checks, teardown; the pool as before.
	before := rbdPoolState(t, store.Pool, name)
	out := testkit.MustRun(t, "failover", "--runbook", rbPath, "--drill")
	t.Logf("drill:\n%s", out)
	if !strings.Contains(out, "complete") || !strings.Contains(out, "stopped and its copy removed") || len(guest.ParseTicks(mustRead(t, serial))) == 0 {
		t.Fatalf("the drill did not run the VM:\n%s", out)
	}
	if after := rbdPoolState(t, store.Pool, name); after != before {
		t.Fatalf("the drill left something in the pool:\nbefore %s\nafter  %s", before, after)
	}
	if mark, err := store.TakenOver(name); mark != nil || err != nil {
		t.Fatalf("the drill fenced the replica: %+v %v", mark, err)
	}
	t.Logf("after the drill the pool holds what it held before: %s", before)
	os.Remove(serial)

	// The protected site is lost; fail over to epoch 2.
	ticks := src.Ticks()
	src.Kill()
	pts, err := store.Points(name)
	if err != nil || len(pts) < 2 {
		t.Fatalf("recovery points %v: %v", pts, err)
	}
	point := pts[len(pts)-3].Manifest // an older point, not the newest
	vda, vdb := point.Disk("vda"), point.Disk("vdb")
	im, err := store.Pool.OpenImage(name+"."+vda.File, fmt.Sprintf("e%d", point.Epoch))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := guest.VerifyRecords(im, vda.Size)
	im.Close()
	if err != nil {
		t.Fatalf("records of epoch %d: %v", point.Epoch, err)
	}
	var lo, hi uint64
	for _, tk := range ticks {
		if tk.At.Before(point.Cut) {
			lo = tk.Counter
		} else if hi == 0 {
			hi = tk.Counter
		}
	}
	t0 := time.Now()
	out = testkit.MustRun(t, "failover", "--runbook", rbPath, "--epoch", fmt.Sprint(point.Epoch))
	t.Logf("failover to epoch %d (%v):\n%s", point.Epoch, time.Since(t0).Round(time.Millisecond), out)
	var dr []guest.Tick
	for deadline := time.Now().Add(60 * time.Second); len(dr) < 10 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		dr = guest.ParseTicks(mustRead(t, serial))
	}
	log := string(mustRead(t, serial))
	if len(dr) < 10 || strings.Contains(log, "START") || strings.Contains(log, "RESUME") {
		t.Fatalf("the DR guest did not continue (%d ticks):\n%s", len(dr), log)
	}
	t.Logf("epoch %d cut between counters %d and %d, its disk holds records %d..%d; the DR guest continues at counter %d, record %d",
		point.Epoch, lo, hi, recs.First, recs.Last, dr[0].Counter, dr[0].Seq)
	if dr[0].Counter < lo || dr[0].Counter > hi+20 {
		t.Errorf("the DR guest resumed at counter %d, not at epoch %d's cut (%d..%d)", dr[0].Counter, point.Epoch, lo, hi)
	}
	if dr[0].Seq+5 < recs.Last || dr[0].Seq > recs.Last+5 {
		t.Errorf("the DR guest's last record %d, the point's %d", dr[0].Seq, recs.Last)
	}
	if last := dr[len(dr)-1]; last.Seq <= dr[0].Seq {
		t.Errorf("the DR guest writes no records: %v", dr)
	}
	clone := name + "." + vdb.File + "." + takeover.CloneFailover
	if got := rbdDigest(t, store.Pool, clone, "", vdb.Size, vdb.BlockSize); got != vdb.Digest {
		t.Errorf("disk vdb of the DR guest (%s): digest %016x, epoch %d's %016x", clone, got, point.Epoch, vdb.Digest)
	} else {
		t.Logf("disk vdb of the DR guest is byte-exact epoch %d's (digest %016x)", point.Epoch, got)
	}
	if mark, err := store.TakenOver(name); mark == nil || err != nil {
		t.Errorf("the replica is not marked taken over: %v", err)
	}
	code, out := testkit.Run(t, "send", "--once", "--retries", "0", "--config", p.sendCfg)
	if code != 4 || !strings.Contains(out, "taken over") {
		t.Errorf("sender into a taken-over replica: exit %d\n%s", code, out)
	}
}
