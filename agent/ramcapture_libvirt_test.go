package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/wire"
)

// A libvirt domain whose RAM is a shared memfd backend is cut tracked
// with ram_capture = "tracked": its backend found through libvirt's
// monitor, its QEMU by the domain's UUID; the first epoch is full, the
// next ones tracked (their disks' backup jobs started before the stop),
// and libvirt's view of the domain stays clean.
func TestTrackedCutsOfADomain(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	if err := dirtylog.CheckKernel(); err != nil {
		t.Skipf("this kernel cannot track: %v", err)
	}
	d := guest.ProtectedSharedDomain(t, 128, map[string]string{"rate": "50", "dirty_mib": "8", "dirty_rate_kib": "256"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	o := livecut.Options{WorkDir: filepath.Join(d.Dir, "work"), Now: time.Now, Logger: log}
	lv := libvirtvm.Config{Libvirt: hosttools.LibvirtURI, Domain: d.Name}
	lv.Apply(&o)
	if err := lv.ResolveDisks(&o); err != nil {
		t.Fatal(err)
	}
	if err := setupRAMCapture(ctx, RAMCaptureTracked, &o, true, log); err != nil {
		t.Fatal(err)
	}
	t.Logf("tracking the domain's memory backend %q", o.SharedRAM)
	ls, err := livecut.New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	rcv, err := receiver.New(receiver.Options{Root: "/r", FS: memfs.New(), AckBytes: 16 << 20, Now: time.Now,
		Authorize: func(receiver.Peer, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	snd, err := sender.New(sender.Options{VM: "lv", Source: ls, Dialer: testkit.PipeDialer(rcv, receiver.Peer{Fingerprint: "sha256:aa"}),
		Store: sender.Store{FS: memfs.New(), Dir: "/s"}, Compression: wire.CompressFast, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	for n := 1; n <= 3; n++ {
		if _, err := snd.RunEpoch(ctx); err != nil {
			t.Fatalf("epoch %d: %v", n, err)
		}
		st := ls.LastCut()
		t.Logf("epoch %d: RAM %s, background %v, disks' jobs %s, %d written pages, pause %v, stream %d bytes", n, st.RAMPath, st.Background, st.DiskFreeze, st.DirtyPages, st.Pause.Round(time.Millisecond), st.StreamBytes)
		// libvirt's passthrough does not order events and replies: the
		// first tracked cut starts its jobs before the stop all the same,
		// and asks them while stopped whether the guest wrote.
		if n == 2 && st.DiskFreeze == livecut.FreezeStopped {
			t.Errorf("epoch %d: disks' jobs started while stopped, want them started before the stop", n)
		}
		want := livecut.RAMTracked
		if n == 1 {
			want = livecut.RAMFull
		}
		if st.RAMPath != want {
			t.Fatalf("epoch %d took the %s path, want %s", n, st.RAMPath, want)
		}
	}
	d.CheckCleanView(t, 1)
}
