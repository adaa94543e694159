package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// taggedSource tags each snapshot of a live guest with the group cut the
// test sets, standing in for the protected side's coordinated cut.
type taggedSource struct {
	src *livecut.Source
	tag *vmspec.GroupCut
}

func (s *taggedSource) Snapshot(ctx context.Context) (*sender.Snapshot, error) {
	snap, err := s.src.Snapshot(ctx)
	if err == nil {
		snap.Group = s.tag
	}
	return snap, err
}

// groupRunbook writes a runbook bringing up both test guests.
func (p *pair) groupRunbook(vms []string) string {
	p.t.Helper()
	kernel, initrd := guest.Build(p.t)
	var b strings.Builder
	fmt.Fprintf(&b, "name = \"site-b\"\nreceiver_config = %q\nwork_dir = \"failover\"\n\n[[group]]\nname = \"boot-order\"\nvms = [%q, %q]\n", p.recvCfg, vms[0], vms[1])
	for _, vm := range vms {
		serial := p.path("dr-serial-" + vm + ".log")
		fmt.Fprintf(&b, `
[[vm]]
name = %q
accel = "tcg"
args = ["-display", "none", "-no-reboot", "-nodefaults", "-serial", "file:%s",
        "-kernel", %q, "-initrd", %q, "-append", "console=ttyS0 panic=-1 quiet",
        "-device", "virtio-blk-pci,drive=disk0,id=vblk0", "-device", "virtio-blk-pci,drive=disk1,id=vblk1"]
  [[vm.disk]]
  replica = "vda"
  node = "disk0"
  [[vm.disk]]
  replica = "vdb"
  node = "disk1"
  [[vm.check]]
  kind = "serial"
  file = %q
  match = "^TICK "
  timeout = "180s"
`, vm, serial, kernel, initrd, serial)
	}
	return p.write("runbook.toml", b.String())
}

// TestGroupFailoverToCompletePoint: two running guests replicate; both
// commit an epoch of group cut 1, then guest-1 commits epochs of its own
// and one of cut 2 that guest-2 never commits. Failing the consistency
// group over resumes both guests, with their memory, from cut 1: the dry
// run says so per VM, and each DR guest's counter continues from its
// epoch of cut 1, not from guest-1's newer epochs nor from boot.
func TestGroupFailoverToCompletePoint(t *testing.T) {
	testGroupFailoverToCompletePoint(t, []string{"guest-1", "guest-2"}, func(p *pair) replica.Store {
		return replica.FileStore{FS: vfs.Default, Root: p.replicas, KeepPoints: 1, Now: time.Now}
	})
}

// testGroupFailoverToCompletePoint runs TestGroupFailoverToCompletePoint
// with guests named vms, their replicas in the store that store sets p's
// receiver configuration up for (keeping one point).
func testGroupFailoverToCompletePoint(t *testing.T, vms []string, store func(p *pair) replica.Store) {
	guests := map[string]*guest.VM{}
	for _, name := range vms {
		vm, _ := liveGuest(t, 256, nil)
		guests[name] = vm
		t.Logf("%s booted", name)
	}
	p := newPair(t, []vmSpec{
		{name: vms[0], qmp: guests[vms[0]].QMPSocket, disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}},
		{name: vms[1], qmp: guests[vms[1]].QMPSocket, disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}},
	})
	t.Cleanup(func() { killDRVMs(p) })
	st := store(p)
	rcv, err := receiver.New(receiver.Options{Store: st, Root: p.replicas, FS: vfs.Default, AckBytes: 4 << 20, KeepPoints: 1, Now: time.Now,
		Authorize: func(receiver.Peer, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	srcs := map[string]*taggedSource{}
	senders := map[string]*sender.Sender{}
	for _, name := range vms {
		ls, err := livecut.New(livecut.Options{QMPSocket: guests[name].QMPSocket, WorkDir: p.path("work-" + name), Now: time.Now, Disks: liveDisks,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		if err != nil {
			t.Fatal(err)
		}
		defer ls.Close()
		srcs[name] = &taggedSource{src: ls}
		snd, err := sender.New(sender.Options{VM: name, Source: srcs[name], Dialer: testkit.PipeDialer(rcv, receiver.Peer{Fingerprint: "sha256:aa"}),
			Store: sender.Store{FS: vfs.Default, Dir: p.path("state/" + name)}, Compression: wire.CompressFast, Now: time.Now})
		if err != nil {
			t.Fatal(err)
		}
		defer snd.Close()
		senders[name] = snd
	}
	epoch := func(name string, cut uint64) uint64 {
		t.Helper()
		srcs[name].tag = nil
		if cut > 0 {
			srcs[name].tag = &vmspec.GroupCut{Group: "shop", Cut: cut, Members: vms}
		}
		res, err := senders[name].RunEpoch(context.Background())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s: epoch %d committed, group cut %d, pause %v", name, res.Epoch, cut, res.Pause.Round(100*time.Microsecond))
		time.Sleep(time.Second) // the guests' counters move on between cuts
		return res.Epoch
	}
	epoch(vms[0], 1)
	epoch(vms[1], 1)
	epoch(vms[0], 0)
	epoch(vms[0], 0)
	epoch(vms[0], 2) // guest-2 never commits cut 2
	epoch(vms[0], 0)
	cuts := map[string]time.Time{}
	for _, name := range vms {
		pts, err := st.Points(name)
		if err != nil {
			t.Fatal(err)
		}
		var eps []uint64
		for _, pt := range pts {
			eps = append(eps, pt.Manifest.Epoch)
			if g := pt.Manifest.Tag(); g != nil && g.Cut == 1 {
				cuts[name] = pt.Manifest.Cut
			}
		}
		t.Logf("%s keeps points %v (keep_points 1)", name, eps)
	}
	if len(cuts) != 2 {
		t.Fatalf("the epochs of group cut 1 are not all retained: %v", cuts)
	}
	ticks := map[string][]guest.Tick{}
	for _, name := range vms {
		senders[name].Disconnect()
		ticks[name] = guests[name].Ticks()
		guests[name].Kill()
	}
	t.Log("protected site lost")
	rb := p.groupRunbook(vms)
	out := testkit.MustRun(t, "failover", "--runbook", rb, "--dry-run", "--consistency-group", "shop")
	t.Logf("dry run:\n%s", out)
	for _, want := range []string{"group point of cut 1", vms[0] + " epoch 1, " + vms[1] + " epoch 1", "start:" + vms[0], "from epoch 1 "} {
		if !strings.Contains(out, want) {
			t.Fatalf("dry run does not say %q", want)
		}
	}
	code, out := testkit.Run(t, "failover", "--runbook", rb, "--consistency-group", "shop")
	t.Logf("failover (exit %d):\n%s", code, out)
	if code != 0 {
		for _, name := range vms {
			t.Logf("%s DR console:\n%s", name, mustRead(t, p.path("dr-serial-"+name+".log")))
			filepath.Walk(p.path("failover/"+name), func(path string, info os.FileInfo, err error) error {
				if err == nil && strings.HasSuffix(path, ".log") {
					t.Logf("%s:\n%s", path, mustRead(t, path))
				}
				return nil
			})
		}
		t.FailNow()
	}
	for _, name := range vms {
		serial := p.path("dr-serial-" + name + ".log")
		var dr []guest.Tick
		for deadline := time.Now().Add(60 * time.Second); len(dr) < 3 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			dr = guest.ParseTicks(mustRead(t, serial))
		}
		if len(dr) == 0 {
			t.Fatalf("%s: no DR ticks:\n%s", name, mustRead(t, serial))
		}
		var lo, hi, last uint64
		for _, tk := range ticks[name] {
			if tk.At.Before(cuts[name]) {
				lo = tk.Counter
			} else if hi == 0 {
				hi = tk.Counter
			}
			last = tk.Counter
		}
		t.Logf("%s: group cut 1 between counters %d and %d (the protected guest reached %d); the DR guest continues at %d", name, lo, hi, last, dr[0].Counter)
		if dr[0].Counter < lo || dr[0].Counter > hi+20 {
			t.Errorf("%s resumed at counter %d, not at group cut 1 (%d..%d)", name, dr[0].Counter, lo, hi)
		}
	}
}
