package libvirtvm_test

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/takeover"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/wire"
)

// TestTakeoverIntoLibvirt replicates a libvirt domain for a few epochs,
// destroys it, and takes its replica over into libvirt: the domain is
// defined from the replicated definition (disks on the takeover's
// overlays, no network) and resumed with its memory; it runs as a
// persistent libvirt domain and the guest continues from the cut.
func TestTakeoverIntoLibvirt(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	d := guest.ProtectedDomain(t, 128, map[string]string{"rate": "50"})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	m, err := libvirtvm.Dial(ctx, hosttools.LibvirtURI, d.Name, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	found, err := m.Disks(ctx)
	m.Close()
	if err != nil {
		t.Fatal(err)
	}
	var ld []livecut.Disk
	var td []takeover.Disk
	for _, f := range found {
		ld = append(ld, livecut.Disk{Name: f.Target, Node: f.Node})
		td = append(td, takeover.Disk{Target: f.Target, Node: f.Target})
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ls, err := livecut.New(livecut.Options{
		QMPSocket: libvirtvm.Address(hosttools.LibvirtURI, d.Name), Dial: libvirtvm.DialMonitor,
		WorkDir: filepath.Join(d.Dir, "work"), Now: time.Now, Disks: ld, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	dr := hosttools.ShortTempDir(t, "lvdr")
	rcv, err := receiver.New(receiver.Options{Root: filepath.Join(dr, "replicas"), FS: vfs.Default, Authorize: func(receiver.Peer, string) error { return nil }, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	s, err := sender.New(sender.Options{VM: "web-1", Dialer: testkit.PipeDialer(rcv, receiver.Peer{Fingerprint: "sha256:aa", Name: "site-a"}),
		Source: libvirtvm.Config{Libvirt: hosttools.LibvirtURI, Domain: d.Name}.WithDefinition(ls),
		Store:  sender.Store{FS: vfs.Default, Dir: filepath.Join(dr, "sender")}, Compression: wire.CompressFast, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for e := 1; e <= 3; e++ {
		if _, err := s.RunEpoch(ctx); err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
		t.Logf("epoch %d committed", e)
	}
	last := d.Ticks()[len(d.Ticks())-1]
	hosttools.Virsh(t, "destroy", d.Name)
	t.Logf("protected domain destroyed at tick %d", last.Counter)

	work := filepath.Join(dr, "work")
	p, err := takeover.Prepare(takeover.Options{Replica: filepath.Join(dr, "replicas", "web-1"), WorkDir: work, Disks: td, Fence: "failover test", FullStream: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("prepared epoch %d: definition %d bytes", p.Epoch, len(p.Definition))
	disks := map[string]string{}
	for i, dk := range td {
		disks[dk.Target] = p.Overlays[i]
	}
	name := d.Name + "-dr"
	t.Cleanup(func() {
		exec.Command("virsh", "-c", hosttools.LibvirtURI, "destroy", name).Run()
		exec.Command("virsh", "-c", hosttools.LibvirtURI, "undefine", name).Run()
	})
	got, err := libvirtvm.Restore{URI: hosttools.LibvirtURI, Definition: p.Definition, Stream: p.Stream, Image: filepath.Join(work, "restore.img"), Persistent: true,
		DR: libvirtvm.DRDefinition{Name: name, Disks: disks, Isolated: true, Dir: work}}.Do(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restored %s: save image written in %v, loaded in %v", got.Name, got.Written.Round(time.Millisecond), got.Loaded.Round(time.Millisecond))
	if st := strings.TrimSpace(hosttools.Virsh(t, "domstate", name)); st != "running" {
		t.Fatalf("domain %s is %s", name, st)
	}
	if !strings.Contains(hosttools.Virsh(t, "list", "--persistent", "--name"), name) {
		t.Errorf("domain %s is not persistent", name)
	}
	g := &guest.Domain{Name: name, Dir: work, Serial: filepath.Join(work, "serial0.log")}
	tk, err := g.WaitTicks(5, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// Continued from the cut: later than boot, no later than the
	// protected guest's last tick.
	if tk[0].Counter <= 10 || tk[0].Counter > last.Counter+1 {
		t.Fatalf("the guest ticks from %d after the takeover; the protected one was at %d", tk[0].Counter, last.Counter)
	}
	t.Logf("the guest continues from the cut: ticks %d..%d", tk[0].Counter, tk[len(tk)-1].Counter)
}
