package takeover_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/takeover"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/wire"
)

// TestTakeoverFromTrackedEpoch replicates a guest whose RAM is a shared
// memfd backend with RAM tracking (the first epoch full, the later ones
// device state plus written pages), kills it, and brings it up from the
// last, tracked, epoch: the guest continues from the cut (counter, no
// boot) and runs on.
func TestTakeoverFromTrackedEpoch(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, pidfd_getfd)")
	}
	const mib = 256
	src, dir := guest.ProtectedWith(t, mib, map[string]string{"dirty_mib": "64", "dirty_rate_kib": "512"},
		"-object", fmt.Sprintf("memory-backend-memfd,id=ram0,size=%dM,share=on", mib), "-machine", "memory-backend=ram0")
	kernel, initrd := guest.Build(t)
	rcv, err := receiver.New(receiver.Options{Root: filepath.Join(dir, "replicas"), FS: vfs.Default, Now: time.Now,
		Authorize: func(receiver.Peer, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	cut, err := livecut.New(livecut.Options{QMPSocket: src.QMPSocket, WorkDir: filepath.Join(dir, "live"), Now: time.Now,
		Disks:     []livecut.Disk{{Name: "vda", Node: "disk0"}, {Name: "vdb", Node: "disk1"}},
		SharedRAM: "ram0",
		TrackRAM:  func() (livecut.RAMTracker, error) { return dirtylog.TrackGuest(src.Pid, mib<<20) }})
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
	for n := 1; n <= 3; n++ {
		if last, err = snd.RunEpoch(context.Background()); err != nil {
			t.Fatal(err)
		}
		st := cut.LastCut()
		t.Logf("epoch %d: RAM %s, %d dirty pages, pause %v, stream %d bytes", n, st.RAMPath, st.DirtyPages, last.Pause, st.StreamBytes)
		if want := map[bool]string{true: livecut.RAMFull, false: livecut.RAMTracked}[n == 1]; st.RAMPath != want {
			t.Fatalf("epoch %d took the %s path, want %s", n, st.RAMPath, want)
		}
		time.Sleep(time.Second)
	}
	var before, after guest.Tick
	for _, tk := range src.Ticks() {
		if tk.At.Before(last.Cut) {
			before = tk
		} else if after.At.IsZero() {
			after = tk
		}
	}
	src.Kill()
	cut.Close()

	serial := filepath.Join(dir, "dr-serial.log")
	plan, err := takeover.Prepare(takeover.Options{
		Replica: filepath.Join(dir, "replicas", "app-1"), WorkDir: filepath.Join(dir, "dr"),
		Args: drArgs(kernel, initrd, serial), MainRAM: "ram0",
		Disks: []takeover.Disk{{Target: "vda", Node: "disk0"}, {Target: "vdb", Node: "disk1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := takeover.Start(context.Background(), plan, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	t.Logf("took over epoch %d: guest %s", plan.Epoch, vm.Status)
	var ticks []guest.Tick
	for deadline := time.Now().Add(60 * time.Second); len(ticks) < 20 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, _ := os.ReadFile(serial)
		ticks = guest.ParseTicks(b)
	}
	log, _ := os.ReadFile(serial)
	if len(ticks) < 20 {
		t.Fatalf("the DR guest printed %d ticks:\n%s", len(ticks), log)
	}
	if strings.Contains(string(log), "START") || strings.Contains(string(log), "RESUME") {
		t.Fatalf("the DR guest booted instead of continuing:\n%s", log)
	}
	first, lastTick := ticks[0], ticks[len(ticks)-1]
	t.Logf("source counter %d before the cut, %d after it; DR guest continues at %d, then %d", before.Counter, after.Counter, first.Counter, lastTick.Counter)
	if first.Counter < before.Counter || first.Counter > after.Counter+20 {
		t.Errorf("the DR guest's counter %d does not continue from the cut (%d..%d)", first.Counter, before.Counter, after.Counter)
	}
	if lastTick.Counter <= first.Counter {
		t.Errorf("the DR guest does not run on: %v -> %v", first, lastTick)
	}
}
