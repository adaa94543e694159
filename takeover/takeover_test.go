package takeover_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/takeover"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/wire"
)

// TestTakeoverContinuesTheGuest replicates a running guest, kills it, and
// brings it up from the replica: the guest is not rebooted, its in-memory
// counter continues from the last committed epoch, its disk records are
// whole, and the replica itself is not changed by the running copy.
func TestTakeoverContinuesTheGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	r := replicateGuest(t, 256, 3)
	src, dir, kernel, initrd, last := r.src, r.dir, r.kernel, r.initrd, r.last
	// The guest runs on a while after the last epoch, then the site dies.
	time.Sleep(2 * time.Second)
	var before, after guest.Tick // the ticks around the last cut
	for _, tk := range src.Ticks() {
		if tk.At.Before(last.Cut) {
			before = tk
		} else if after.At.IsZero() {
			after = tk
		}
	}
	killedAt := src.Ticks()[len(src.Ticks())-1]
	src.Kill()

	repl := filepath.Join(dir, "replicas", "app-1")
	hashes := func() map[string]string {
		out := map[string]string{}
		entries, _ := os.ReadDir(repl)
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".img") {
				out[e.Name()] = testkit.FileHash(t, filepath.Join(repl, e.Name()), -1)
			}
		}
		return out
	}
	h0 := hashes()

	serial := filepath.Join(dir, "dr-serial.log")
	opts := takeover.Options{
		Replica: repl, WorkDir: filepath.Join(dir, "dr"),
		Args:  drArgs(kernel, initrd, serial),
		Disks: []takeover.Disk{{Target: "vda", Node: "disk0"}, {Target: "vdb", Node: "disk1"}},
	}
	t0 := time.Now()
	plan, err := takeover.Prepare(opts)
	if err != nil {
		t.Fatal(err)
	}
	prepared := time.Now()
	vm, err := takeover.Start(context.Background(), plan, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	t.Logf("takeover of epoch %d: prepare %v, QEMU start to guest %s %v, total %v",
		plan.Epoch, prepared.Sub(t0).Round(time.Millisecond), vm.Status, vm.Running.Sub(vm.Started).Round(time.Millisecond), vm.Running.Sub(t0).Round(time.Millisecond))
	if vm.Status != "running" {
		t.Fatalf("guest is %s", vm.Status)
	}
	var ticks []guest.Tick
	for deadline := time.Now().Add(30 * time.Second); len(ticks) < 20 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, _ := os.ReadFile(serial)
		ticks = guest.ParseTicks(b)
	}
	if len(ticks) < 20 {
		b, _ := os.ReadFile(serial)
		t.Fatalf("the DR guest printed %d ticks:\n%s", len(ticks), b)
	}
	log, _ := os.ReadFile(serial)
	if strings.Contains(string(log), "START") || strings.Contains(string(log), "RESUME") {
		t.Fatalf("the DR guest booted instead of continuing:\n%s", log)
	}
	first := ticks[0]
	t.Logf("source: counter %d before the cut, %d after it, %d when killed; DR guest continues at counter %d, record %d",
		before.Counter, after.Counter, killedAt.Counter, first.Counter, first.Seq)
	if first.Counter < before.Counter || first.Counter > after.Counter+20 {
		t.Errorf("the DR guest's counter %d does not continue from the cut (%d..%d)", first.Counter, before.Counter, after.Counter)
	}
	lastTick := ticks[len(ticks)-1]
	if lastTick.Counter <= first.Counter || lastTick.Seq <= first.Seq {
		t.Errorf("the DR guest does not run on: %v -> %v", first, lastTick)
	}
	// The running copy writes to its overlays, never to the replica.
	vm.Stop()
	if h1 := hashes(); len(h1) != len(h0) || func() bool {
		for k, v := range h0 {
			if h1[k] != v {
				return true
			}
		}
		return false
	}() {
		t.Error("running the DR copy changed the replica's images")
	}
	testkit.MustRun(t, "verify", "--replica", repl)
}

type replicated struct {
	src            *guest.VM
	dir            string
	kernel, initrd string
	last           *sender.Result
}

// replicateGuest boots the test guest with memMiB of RAM, a raw and a
// qcow2 disk, and replicates it for epochs epochs into dir/replicas/app-1.
func replicateGuest(t testing.TB, memMiB, epochs int) replicated {
	return replicateGuestWith(t, memMiB, epochs, nil)
}

// replicateGuestWith is replicateGuest with a commit hook on the receiver.
func replicateGuestWith(t testing.TB, memMiB, epochs int, onCommit func(receiver.EpochStats)) replicated {
	return replicateGuestInto(t, memMiB, epochs, onCommit, nil)
}

// replicateGuestInto is replicateGuestWith into store (nil: files under
// dir/replicas).
func replicateGuestInto(t testing.TB, memMiB, epochs int, onCommit func(receiver.EpochStats), store replica.Store) replicated {
	t.Helper()
	src, dir := guest.Protected(t, memMiB, nil)
	kernel, initrd := guest.Build(t)
	rcv, err := receiver.New(receiver.Options{Root: filepath.Join(dir, "replicas"), FS: vfs.Default, Now: time.Now, Store: store,
		Authorize: func(receiver.Peer, string) error { return nil }, OnCommit: onCommit})
	if err != nil {
		t.Fatal(err)
	}
	cut, err := livecut.New(livecut.Options{QMPSocket: src.QMPSocket, WorkDir: filepath.Join(dir, "live"), Now: time.Now,
		Disks: []livecut.Disk{{Name: "vda", Node: "disk0"}, {Name: "vdb", Node: "disk1"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer cut.Close()
	snd, err := sender.New(sender.Options{VM: "app-1", Source: cut, Dialer: testkit.PipeDialer(rcv, receiver.Peer{Fingerprint: "sha256:aa"}),
		Store: sender.Store{FS: vfs.Default, Dir: filepath.Join(dir, "state")}, Compression: wire.CompressFast, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	var last *sender.Result
	for range epochs {
		if last, err = snd.RunEpoch(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	return replicated{src: src, dir: dir, kernel: kernel, initrd: initrd, last: last}
}

// drArgs are the test guest's machine options at the DR site.
func drArgs(kernel, initrd, serial string) []string {
	return []string{"-accel", "tcg", "-display", "none", "-no-reboot", "-nodefaults", "-serial", "file:" + serial,
		"-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet no_timer_check",
		"-device", "virtio-blk-pci,drive=disk0,id=vblk0", "-device", "virtio-blk-pci,drive=disk1,id=vblk1"}
}
