//go:build ceph && cgo

package takeover_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/takeover"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
)

// rbdTestStore opens a replica store in the test cluster's pool, its
// names apart from other tests' by prefix.
func rbdTestStore(t testing.TB, prefix string, keep int) *rbdstore.Store {
	c := testkit.CephCluster(t)
	s, closeFn, err := rbdstore.Open(rbdstore.Config{Pool: c.Pool, CephConf: c.Conf, Client: c.Client, Prefix: prefix}, keep, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeFn)
	return s
}

// poolState lists the images whose names start with prefix, and for each
// its snapshots (a "+" after a protected one).
func poolState(t testing.TB, s *rbdstore.Store, prefix string) []string {
	t.Helper()
	names, err := s.Pool.ListImages()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		if !strings.HasPrefix(n, prefix) {
			continue
		}
		im, err := s.Pool.OpenImage(n, "")
		if err != nil {
			t.Fatal(err)
		}
		snaps, err := im.Snaps()
		im.Close()
		if err != nil {
			t.Fatal(err)
		}
		var ss []string
		for _, sn := range snaps {
			if sn.Protected {
				sn.Name += "+"
			}
			ss = append(ss, sn.Name)
		}
		out = append(out, fmt.Sprintf("%s[%s]", n, strings.Join(ss, " ")))
	}
	return out
}

// imageDigest is the block table digest of an image's first size bytes.
func imageDigest(t testing.TB, p rbd.Pool, name, snap string, size int64, bs int) uint64 {
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

// TestTakeoverFromRBD replicates the running test guest into a replica
// store on Ceph RBD, then: a drill runs the guest on clones of the
// committed epoch and leaves nothing behind (no clone, no snapshot of its
// own, no protected snapshot); an older recovery point's clones read
// byte-exact what the replica held then; and a failover fences the
// replica (the receiver refuses it from then on) and resumes the guest
// from the cut on clones, QEMU's rbd driver writing them, the replica's
// images untouched.
func TestTakeoverFromRBD(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest and a Ceph cluster")
	}
	prefix := fmt.Sprintf("tk%d-", time.Now().UnixNano()%1e6)
	store := rbdTestStore(t, prefix, 2)
	r := replicateGuestInto(t, 256, 3, nil, store)
	src, dir := r.src, r.dir
	time.Sleep(time.Second)
	var before, after guest.Tick
	for _, tk := range src.Ticks() {
		if tk.At.Before(r.last.Cut) {
			before = tk
		} else if after.At.IsZero() {
			after = tk
		}
	}
	src.Kill()
	vmName := "app-1"
	m, err := store.Manifest(vmName)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("replica at epoch %d in %s", m.Epoch, store.Where(vmName))
	initial := poolState(t, store, prefix)
	t.Logf("pool before: %v", initial)
	disks := []takeover.Disk{{Target: "vda", Node: "disk0"}, {Target: "vdb", Node: "disk1"}}
	ticks := func(serial string, n int) []guest.Tick {
		var tks []guest.Tick
		for deadline := time.Now().Add(60 * time.Second); len(tks) < n && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			b, _ := os.ReadFile(serial)
			tks = guest.ParseTicks(b)
		}
		if len(tks) < n {
			b, _ := os.ReadFile(serial)
			t.Fatalf("%s: %d ticks:\n%s", serial, len(tks), b)
		}
		return tks
	}

	// A drill: clones, run, teardown, nothing left.
	serial := filepath.Join(dir, "drill.log")
	plan, err := takeover.Prepare(takeover.Options{Store: store, VM: vmName, WorkDir: filepath.Join(dir, "drill"), Copy: true,
		Args: drArgs(r.kernel, r.initrd, serial), Disks: disks})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("drill disks: %v", plan.Overlays)
	vm, err := takeover.Start(context.Background(), plan, nil)
	if err != nil {
		plan.Discard()
		t.Fatal(err)
	}
	ticks(serial, 5)
	during := poolState(t, store, prefix)
	qmpQuit(vm)
	if err := plan.Discard(); err != nil {
		t.Fatal(err)
	}
	if after := poolState(t, store, prefix); strings.Join(after, " ") != strings.Join(initial, " ") {
		t.Fatalf("the drill left something behind:\nbefore %v\nduring %v\nafter  %v", initial, during, after)
	}
	t.Logf("drill ran on %v; afterwards the pool is as before", during)
	if mark, _ := store.TakenOver(vmName); mark != nil {
		t.Fatalf("a drill fenced the replica: %+v", mark)
	}

	// An older recovery point: its clones read what the replica held.
	pts, err := store.Points(vmName)
	if err != nil || len(pts) < 2 {
		t.Fatalf("points %v: %v", pts, err)
	}
	old := pts[0].Manifest
	plan, err = takeover.Prepare(takeover.Options{Store: store, VM: vmName, WorkDir: filepath.Join(dir, "point"), Copy: true, Epoch: old.Epoch,
		Args: drArgs(r.kernel, r.initrd, filepath.Join(dir, "point.log")), Disks: disks})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		e := old.Disk(d.Target)
		got := imageDigest(t, store.Pool, prefix+vmName+"."+e.File+"."+takeover.CloneDrill, "", e.Size, e.BlockSize)
		if got != e.Digest {
			t.Errorf("clone of disk %s at epoch %d: digest %016x, the point's manifest says %016x", d.Target, old.Epoch, got, e.Digest)
		}
	}
	if err := plan.Discard(); err != nil {
		t.Fatal(err)
	}
	t.Logf("recovery point %d: clones byte-exact", old.Epoch)

	// The failover.
	serial = filepath.Join(dir, "dr.log")
	t0 := time.Now()
	plan, err = takeover.Prepare(takeover.Options{Store: store, VM: vmName, WorkDir: filepath.Join(dir, "dr"), Fence: "test failover",
		Args: drArgs(r.kernel, r.initrd, serial), Disks: disks})
	if err != nil {
		t.Fatal(err)
	}
	vm, err = takeover.Start(context.Background(), plan, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		qmpQuit(vm)
		if err := plan.Discard(); err != nil {
			t.Error(err)
		}
	}()
	t.Logf("failover of epoch %d: guest running %v after the takeover began (RAM %s)", plan.Epoch, vm.Running.Sub(t0).Round(time.Millisecond), vm.RAMLoad)
	if vm.RAMLoad != takeover.RAMLazy && os.Geteuid() == 0 {
		t.Errorf("RAM loaded %s, want %s", vm.RAMLoad, takeover.RAMLazy)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := vm.WaitResident(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("RAM all in %v after the takeover began", time.Since(t0).Round(time.Millisecond))
	tks := ticks(serial, 20)
	if log, _ := os.ReadFile(serial); strings.Contains(string(log), "START") {
		t.Fatalf("the DR guest booted instead of continuing:\n%s", log)
	}
	first, last := tks[0], tks[len(tks)-1]
	t.Logf("source counter %d before the cut, %d after; DR guest continues at %d, record %d", before.Counter, after.Counter, first.Counter, first.Seq)
	if first.Counter < before.Counter || first.Counter > after.Counter+20 {
		t.Errorf("the DR guest's counter %d does not continue from the cut (%d..%d)", first.Counter, before.Counter, after.Counter)
	}
	if last.Counter <= first.Counter || last.Seq <= first.Seq {
		t.Errorf("the DR guest does not run on: %v -> %v", first, last)
	}
	if _, err := store.Open(context.Background(), vmName, replica.OpenOptions{}); !errors.Is(err, replica.ErrTakenOver) {
		t.Errorf("the receiver's open of a taken-over replica: %v, want ErrTakenOver", err)
	}
	// The replica's images are the committed epoch still: the guest
	// writes its clones.
	rep, err := store.Verify(vmName)
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("verify after the failover: %v %v", err, rep)
	}
	// A second failover never replaces clones the VM writes to.
	if _, err := takeover.Prepare(takeover.Options{Store: store, VM: vmName, WorkDir: filepath.Join(dir, "dr2"), Fence: "test failover",
		Args: drArgs(r.kernel, r.initrd, serial), Disks: disks}); !errors.Is(err, takeover.ErrOverlaysWritten) {
		t.Errorf("a second failover: %v, want ErrOverlaysWritten", err)
	}
}
