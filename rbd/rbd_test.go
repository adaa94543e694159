//go:build ceph && cgo

package rbd_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/testkit"
)

func TestMain(m *testing.M) {
	if os.Getenv("RBD_TEST_HOLD_LOCK") != "" {
		holdLock()
		return
	}
	testkit.Main(m)
}

// holdLock is the child process of TestDeadHolderLockIsBroken: it takes an
// image's lock, says so and waits to be killed.
func holdLock() {
	p := connect(nil, os.Getenv("RBD_TEST_CONF"), os.Getenv("RBD_TEST_CLIENT"), os.Getenv("RBD_TEST_POOL"))
	im, err := p.OpenImage(os.Getenv("RBD_TEST_HOLD_LOCK"), "")
	if err == nil {
		err = im.Acquire()
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("locked")
	time.Sleep(time.Hour)
}

func connect(t *testing.T, conf, client, pool string) rbd.Pool {
	c, err := rbd.Connect(rbd.Config{ConfFile: conf, Client: client})
	if err == nil {
		var p rbd.Pool
		if p, err = c.OpenPool(pool); err == nil {
			if t != nil {
				t.Cleanup(func() { p.Close(); c.Close() })
			}
			return p
		}
	}
	if t == nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	t.Fatal(err)
	return nil
}

func pool(t *testing.T) (rbd.Pool, *testkit.Ceph) {
	c := testkit.CephCluster(t)
	return connect(t, c.Conf, c.Client, c.Pool), c
}

// image creates a fresh image named after the test, removed at the end.
func image(t *testing.T, p rbd.Pool, size uint64) (string, rbd.Image) {
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	if err := p.CreateImage(name, size); err != nil {
		t.Fatal(err)
	}
	im, err := p.OpenImage(name, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		snaps, _ := im.Snaps()
		for _, s := range snaps {
			im.UnprotectSnap(s.Name)
			im.RemoveSnap(s.Name)
		}
		im.Close()
		if err := p.RemoveImage(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("remove %s: %v", name, err)
		}
	})
	return name, im
}

func read(t *testing.T, im rbd.Image, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := im.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", im.Name(), off, err)
	}
	return b
}

func TestImageReadWrite(t *testing.T) {
	p, _ := pool(t)
	name, im := image(t, p, 8<<20)
	data := bytes.Repeat([]byte("drsync!"), 100_000) // spans two 4 MiB objects
	for _, tc := range []struct {
		off  int64
		data []byte
	}{{0, []byte("head")}, {4<<20 - 3, data}, {8<<20 - 4, []byte("tail")}} {
		if _, err := im.WriteAt(tc.data, tc.off); err != nil {
			t.Fatal(err)
		}
		if got := read(t, im, tc.off, len(tc.data)); !bytes.Equal(got, tc.data) {
			t.Fatalf("read back at %d differs", tc.off)
		}
	}
	if err := im.WriteZeroes(4<<20-3, uint64(len(data))); err != nil {
		t.Fatal(err)
	}
	if got := read(t, im, 4<<20-3, len(data)); !bytes.Equal(got, make([]byte, len(data))) {
		t.Fatal("zeroed range reads nonzero")
	}
	if err := im.Resize(16 << 20); err != nil {
		t.Fatal(err)
	}
	if s, err := im.Size(); s != 16<<20 || err != nil {
		t.Fatalf("size after resize: %d, %v", s, err)
	}
	if got := read(t, im, 8<<20-4, 4); string(got) != "tail" {
		t.Fatalf("resize lost data: %q", got)
	}
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	names, err := p.ListImages()
	if err != nil || !contains(names, name) {
		t.Fatalf("list: %v, %v", names, err)
	}
	if _, err := p.OpenImage("no-such-image", ""); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "no-such-image") {
		t.Fatalf("open of a missing image: %v; want ErrNotExist naming it", err)
	}
	if err := p.CreateImage(name, 1<<20); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("create of an existing image: %v, want ErrExist", err)
	}
	if err := im.SetMetadata("drsync.holder", "receiver pid 7"); err != nil {
		t.Fatal(err)
	}
	if v, err := im.Metadata("drsync.holder"); v != "receiver pid 7" || err != nil {
		t.Fatalf("metadata: %q, %v", v, err)
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func TestSnapshotsAndClones(t *testing.T) {
	p, _ := pool(t)
	name, im := image(t, p, 4<<20)
	im.WriteAt([]byte("epoch one"), 4096)
	if err := im.CreateSnap("e1"); err != nil {
		t.Fatal(err)
	}
	im.WriteAt([]byte("epoch two"), 4096)
	if err := im.CreateSnap("e2"); err != nil {
		t.Fatal(err)
	}
	im.WriteAt([]byte("staged!!!"), 4096)

	snaps, err := im.Snaps()
	if err != nil || len(snaps) != 2 || snaps[0].Name != "e1" || snaps[1].Name != "e2" || snaps[0].Size != 4<<20 {
		t.Fatalf("snapshots: %+v, %v", snaps, err)
	}
	at, err := p.OpenImage(name, "e1")
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, at, 4096, 9); string(got) != "epoch one" {
		t.Fatalf("snapshot e1 reads %q", got)
	}
	if _, err := at.WriteAt([]byte("x"), 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write to a snapshot: %v, want EROFS", err)
	}
	at.Close()

	// A clone of a protected snapshot: copy-on-write, the parent unchanged.
	if err := p.Clone(name, "e1", name+"-clone"); err == nil {
		t.Fatal("cloned an unprotected snapshot")
	}
	if err := im.ProtectSnap("e1"); err != nil {
		t.Fatal(err)
	}
	if err := p.Clone(name, "e1", name+"-clone"); err != nil {
		t.Fatal(err)
	}
	cl, err := p.OpenImage(name+"-clone", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, cl, 4096, 9); string(got) != "epoch one" {
		t.Fatalf("clone reads %q", got)
	}
	cl.WriteAt([]byte("DR writes"), 4096)
	if err := im.UnprotectSnap("e1"); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("unprotect with a clone: %v, want EBUSY", err)
	}
	cl.Close()
	if err := p.RemoveImage(name + "-clone"); err != nil {
		t.Fatal(err)
	}
	if err := im.UnprotectSnap("e1"); err != nil {
		t.Fatal(err)
	}

	if err := im.RollbackSnap("e2"); err != nil {
		t.Fatal(err)
	}
	if got := read(t, im, 4096, 9); string(got) != "epoch two" {
		t.Fatalf("after rollback to e2: %q", got)
	}
	for _, s := range []string{"e1", "e2"} {
		if err := im.RemoveSnap(s); err != nil {
			t.Fatal(err)
		}
	}
	if snaps, err := im.Snaps(); len(snaps) != 0 || err != nil {
		t.Fatalf("snapshots after removal: %+v, %v", snaps, err)
	}
}

func TestObjects(t *testing.T) {
	p, _ := pool(t)
	oid := "drsync-test-object"
	defer p.RemoveObject(oid)
	for _, data := range [][]byte{bytes.Repeat([]byte("long "), 20000), []byte("short"), {}} {
		if err := p.WriteObject(oid, data); err != nil {
			t.Fatal(err)
		}
		got, err := p.ReadObject(oid)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read back %d bytes: %d bytes, %v", len(data), len(got), err)
		}
	}
	if err := p.RemoveObject(oid); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ReadObject(oid); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read of a removed object: %v, want ErrNotExist", err)
	}
}

func TestExclusiveLock(t *testing.T) {
	p, c := pool(t)
	name, a := image(t, p, 1<<20)
	if err := a.Acquire(); err != nil {
		t.Fatal(err)
	}
	// A second client: refused while the first lives.
	q := connect(t, c.Conf, c.Client, c.Pool)
	b, err := q.OpenImage(name, "")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Acquire(); !errors.Is(err, rbd.ErrLocked) {
		t.Fatalf("second client's acquire: %v, want ErrLocked", err)
	}
	if o, err := b.Owners(); len(o) != 1 || err != nil {
		t.Fatalf("owners: %v, %v", o, err)
	}
	if err := a.Release(); err != nil {
		t.Fatal(err)
	}
	if err := b.Acquire(); err != nil {
		t.Fatalf("acquire once released: %v", err)
	}
	if _, err := b.WriteAt([]byte("mine"), 0); err != nil {
		t.Fatal(err)
	}
}

// TestDeadHolderLockIsBroken kills a process holding an image's lock: the
// lock is taken over once the dead client's watch expires, and the dead
// client is blocklisted.
func TestDeadHolderLockIsBroken(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a dead client's watch to expire")
	}
	p, c := pool(t)
	name, im := image(t, p, 1<<20)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "RBD_TEST_HOLD_LOCK="+name, "RBD_TEST_CONF="+c.Conf, "RBD_TEST_CLIENT="+c.Client, "RBD_TEST_POOL="+c.Pool)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line := make([]byte, 100)
	n, _ := out.Read(line)
	if !strings.HasPrefix(string(line[:n]), "locked") {
		t.Fatalf("the holder says %q", line[:n])
	}
	if err := im.Acquire(); !errors.Is(err, rbd.ErrLocked) {
		t.Fatalf("acquire while the holder lives: %v, want ErrLocked", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	t0 := time.Now()
	for {
		err := im.Acquire()
		if err == nil {
			break
		}
		if !errors.Is(err, rbd.ErrLocked) {
			t.Fatal(err)
		}
		// The cluster's osd_client_watch_timeout is 5 s; a loaded machine
		// gets many times that.
		if time.Since(t0) > 90*time.Second {
			t.Fatalf("the dead holder's lock was not broken in %v: %v", time.Since(t0), err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("dead holder's lock taken over %v after the kill", time.Since(t0).Round(100*time.Millisecond))
	if _, err := im.WriteAt([]byte("mine"), 0); err != nil {
		t.Fatal(err)
	}
}

// TestPoolQuotaIsNoSpace fills a pool past its quota: the write fails with
// ErrNoSpace (EDQUOT) rather than hanging, and succeeds once the quota
// is lifted.
func TestPoolQuotaIsNoSpace(t *testing.T) {
	if testing.Short() {
		t.Skip("writes until the monitors see the quota")
	}
	c := testkit.CephCluster(t)
	const qp = "drsync-quota"
	c.Admin(t, "osd", "pool", "create", qp, "8", "8")
	defer c.Admin(t, "osd", "pool", "delete", qp, qp, "--yes-i-really-really-mean-it")
	c.Admin(t, "osd", "pool", "application", "enable", qp, "rbd")
	c.Admin(t, "osd", "pool", "set-quota", qp, "max_bytes", fmt.Sprint(8<<20))
	p := connect(t, c.Conf, "admin", qp)
	// The monitors learn a pool's usage from the managers' statistics,
	// seconds late: writes go on, each into an object of its own (1 MiB
	// of every 4 MiB object), until the quota is seen.
	const size = 4 << 30
	if err := p.CreateImage("full", size); err != nil {
		t.Fatal(err)
	}
	im, err := p.OpenImage("full", "")
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	chunk := bytes.Repeat([]byte{0xa5}, 1<<20)
	t0 := time.Now()
	var off int64
	for {
		_, err := im.WriteAt(chunk, off)
		if err == nil {
			err = im.Flush()
		}
		if err != nil {
			if !errors.Is(err, rbd.ErrNoSpace) {
				t.Fatalf("write over the quota: %v, want ErrNoSpace", err)
			}
			t.Logf("quota seen after %d MiB, %v: %v", off>>22, time.Since(t0).Round(100*time.Millisecond), err)
			break
		}
		off += 4 << 20
		if off >= size || time.Since(t0) > 2*time.Minute {
			t.Fatalf("wrote %d MiB in %v into a pool with an 8 MiB quota", off>>22, time.Since(t0))
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.Admin(t, "osd", "pool", "set-quota", qp, "max_bytes", "0")
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := im.WriteAt(chunk, 0)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("write after the quota was lifted: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		client string
		ok     bool
	}{{"drsync", true}, {"", true}, {"client.drsync", false}, {"dr sync", false}} {
		if err := (rbd.Config{Client: tc.client}).Validate(); (err == nil) != tc.ok {
			t.Errorf("client %q: %v", tc.client, err)
		}
	}
}

// TestQEMUOpensSnapshotAndClone: QEMU's own rbd driver, as the cephx user
// the cluster gives the receiver, reads a snapshot and writes a clone of it
// without touching the snapshot.
func TestQEMUOpensSnapshotAndClone(t *testing.T) {
	p, c := pool(t)
	name, im := image(t, p, 4<<20)
	if _, err := im.WriteAt(bytes.Repeat([]byte{0x5a}, 64<<10), 1<<20); err != nil {
		t.Fatal(err)
	}
	for _, f := range []func() error{im.Flush, func() error { return im.CreateSnap("e1") }, func() error { return im.ProtectSnap("e1") }} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	cfg := rbd.Config{ConfFile: c.Conf, Client: c.Client}
	if err := p.Clone(name, "e1", name+"-drill"); err != nil {
		t.Fatal(err)
	}
	defer p.RemoveImage(name + "-drill")
	qemuIO := func(file string, cmds ...string) string {
		args := []string{"-f", "raw"}
		if strings.Contains(file, "@") {
			args = append(args, "-r")
		}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out, err := exec.Command("qemu-io", append(args, file)...).CombinedOutput()
		if err != nil || strings.Contains(string(out), "fail") || strings.Contains(string(out), "error") {
			t.Fatalf("qemu-io %s %v: %v\n%s", file, cmds, err, out)
		}
		return string(out)
	}
	snap := rbd.QEMUFile(cfg, c.Pool, name, "e1")
	qemuIO(snap, "read -P 0x5a 1M 64k", "read -P 0 0 1M")
	drill := rbd.QEMUFile(cfg, c.Pool, name+"-drill", "")
	qemuIO(drill, "read -P 0x5a 1M 64k", "write -P 0x77 1M 4k", "read -P 0x77 1M 4k")
	qemuIO(snap, "read -P 0x5a 1M 64k")
}
