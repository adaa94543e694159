package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/wire"
)

// reloadRig runs an Agent of image-file VMs against an in-process receiver
// over pipes, under an adjustable cap.
type reloadRig struct {
	t      *testing.T
	dir    string
	rfs    vfs.FS
	a      *Agent
	o      Options
	logs   hosttools.SyncBuffer
	cancel context.CancelFunc
	runErr chan error

	mu       sync.Mutex
	progress map[string]sender.Progress // latest, per VM
}

// fileVM writes a disk image of size bytes and returns its VM.
func fileVM(t *testing.T, dir, name string, size int, interval time.Duration) VM {
	t.Helper()
	disk := make([]byte, size)
	rng := rand.New(rand.NewPCG(uint64(size), uint64(len(name))))
	// Every other block is zero, so that an epoch is many extents and the
	// sender reports its progress often.
	for i := range disk {
		if i/(64<<10)%2 == 0 {
			disk[i] = byte(rng.Uint32())
		}
	}
	path := filepath.Join(dir, name+".raw")
	if err := os.WriteFile(path, disk, 0o600); err != nil {
		t.Fatal(err)
	}
	return VM{Name: name, StateDir: filepath.Join(dir, "state", name),
		Pacing: Pacing{Mode: Continuous, MinInterval: interval, Compression: wire.CompressNone},
		Files:  &sender.FileSourceOptions{Disks: []sender.FileDisk{{Name: "vda", Path: path, Format: "raw", BlockSize: 64 << 10}}, Now: time.Now}}
}

func newReloadRig(t *testing.T, dir string, capRate float64, vms ...VM) *reloadRig {
	t.Helper()
	r := &reloadRig{t: t, dir: dir, rfs: memfs.New(), runErr: make(chan error, 1), progress: map[string]sender.Progress{}}
	rcv, err := receiver.New(receiver.Options{Root: "/replicas", FS: r.rfs, AckBytes: 256 << 10, Now: time.Now,
		Authorize: func(receiver.Peer, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCap(capRate, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	r.o = Options{VMs: vms, Dialer: c.Dialer(testkit.PipeDialer(rcv, receiver.Peer{Fingerprint: "sha256:aa", Name: "site-a"})),
		Cap: c, BandwidthCap: capRate, Retries: -1, Receiver: "pipe", Fingerprint: "sha256:aa",
		Logger: slog.New(slog.NewTextHandler(&r.logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Progress: func(vm string, p sender.Progress) {
			r.mu.Lock()
			r.progress[vm] = p
			r.mu.Unlock()
		}}
	r.a, err = New(r.o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	r.cancel = cancel
	go func() { r.runErr <- r.a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.runErr:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("the agent did not stop")
		}
		r.a.Close()
		if t.Failed() {
			t.Logf("log:\n%s", r.logs.String())
		}
	})
	return r
}

func (r *reloadRig) progressOf(vm string) sender.Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.progress[vm]
}

// waitFor polls cond until it holds or d passes.
func (r *reloadRig) waitFor(d time.Duration, what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// replica is the epoch the receiver holds for vm and whether its disk is
// the image's content.
func (r *reloadRig) replica(vm string) (uint64, bool) {
	epoch, imgs, err := testkit.ReplicaState(r.rfs, "/replicas/"+vm)
	if err != nil {
		return 0, false
	}
	want, err := os.ReadFile(filepath.Join(r.dir, vm+".raw"))
	if err != nil {
		r.t.Fatal(err)
	}
	return epoch, bytes.Equal(imgs["disk/vda"], want)
}

func (r *reloadRig) reload(mod func(o *Options)) error {
	o := r.o
	o.VMs = slices.Clone(o.VMs)
	mod(&o)
	err := r.a.Reload(o)
	if err == nil {
		r.o = o
	}
	return err
}

// The cap changes while an epoch is sent, at once and to or from none,
// and that epoch still commits whole.
func TestReloadCapMidEpoch(t *testing.T) {
	const size = 8 << 20 // half of it data: 16 s at the old cap
	for _, tc := range []struct {
		name     string
		from, to float64
	}{
		{"lifted", 256e3, 0},
		{"raised", 256e3, 64e6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			r := newReloadRig(t, dir, tc.from, fileVM(t, dir, "web-1", size, time.Hour))
			r.waitFor(20*time.Second, "no progress of the first epoch", func() bool {
				p := r.progressOf("web-1")
				// Planned whole, so that LeftBytes is all that is left.
				return p.SentBytes >= 256<<10 && p.LeftBytes > 0 && !p.Planning
			})
			left := r.progressOf("web-1").LeftBytes
			reloaded := time.Now()
			if err := r.reload(func(o *Options) { o.BandwidthCap = tc.to }); err != nil {
				t.Fatal(err)
			}
			if got := r.o.Cap.Rate(); got != tc.to {
				t.Fatalf("cap %g after the reload, want %g", got, tc.to)
			}
			// At the old rate what is left takes left/from seconds
			// (about 12 s): the new one must show well before half that.
			oldRate := time.Duration(float64(left) / tc.from * float64(time.Second))
			r.waitFor(oldRate/2, "the epoch in flight did not commit sooner at the new cap", func() bool {
				e, ok := r.replica("web-1")
				return e == 1 && ok
			})
			t.Logf("%d bytes left at the reload committed %s after it (%s at the old cap)", left, time.Since(reloaded).Round(time.Millisecond), oldRate.Round(time.Millisecond))
			if !strings.Contains(r.logs.String(), "reload: bandwidth cap 2.05 Mbit/s → ") {
				t.Errorf("no log line for the cap")
			}
		})
	}
}

// A VM a reload adds is replicated, and the VMs already there keep going.
func TestReloadAddsVM(t *testing.T) {
	dir := t.TempDir()
	r := newReloadRig(t, dir, 0, fileVM(t, dir, "web-1", 256<<10, 100*time.Millisecond))
	r.waitFor(20*time.Second, "web-1 not replicated", func() bool { e, _ := r.replica("web-1"); return e >= 1 })
	web2 := fileVM(t, dir, "web-2", 512<<10, 100*time.Millisecond)
	if err := r.reload(func(o *Options) { o.VMs = append(o.VMs, web2) }); err != nil {
		t.Fatal(err)
	}
	r.waitFor(20*time.Second, "web-2 not replicated", func() bool { e, ok := r.replica("web-2"); return e >= 1 && ok })
	before, _ := r.replica("web-1")
	r.waitFor(20*time.Second, "web-1 stopped", func() bool { e, _ := r.replica("web-1"); return e > before })
	if !strings.Contains(r.logs.String(), "reload: vm web-2 added") {
		t.Error("no log line for the VM added")
	}
}

// A VM a reload removes in the middle of an epoch stops once that epoch
// is committed whole, and starts no other; its sender is closed.
func TestReloadRemovesVMAfterEpochInFlight(t *testing.T) {
	dir := t.TempDir()
	// The cap makes web-2's first epoch last about 4 s.
	r := newReloadRig(t, dir, 1e6, fileVM(t, dir, "web-1", 64<<10, 100*time.Millisecond), fileVM(t, dir, "web-2", 4<<20, 100*time.Millisecond))
	r.waitFor(20*time.Second, "web-2's first epoch not under way", func() bool {
		p := r.progressOf("web-2")
		// More than 1 MiB left, or, while the epoch is still being
		// planned (its totals are what is planned so far), less than 1
		// MiB of its 2 MiB handed to the connection.
		return p.Epoch == 1 && p.SentBytes > 0 && (p.LeftBytes > 1<<20 || p.Planning && p.SentBytes < 1<<20)
	})
	if err := r.reload(func(o *Options) { o.VMs = o.VMs[:1] }); err != nil {
		t.Fatal(err)
	}
	if e, _ := r.replica("web-2"); e != 0 {
		t.Fatalf("web-2 at epoch %d before its first epoch could be committed", e)
	}
	r.waitFor(30*time.Second, "web-2's loop did not stop", func() bool {
		r.a.mu.Lock()
		defer r.a.mu.Unlock()
		return r.a.loopOf("web-2") == nil
	})
	e, whole := r.replica("web-2")
	if e != 1 || !whole {
		t.Fatalf("web-2's replica at epoch %d (whole: %v); want its epoch in flight, 1, whole", e, whole)
	}
	// web-1 keeps going, web-2 starts nothing more.
	before, _ := r.replica("web-1")
	r.waitFor(20*time.Second, "web-1 stopped", func() bool { e, _ := r.replica("web-1"); return e >= before+3 })
	if st, err := ReadStatus(filepath.Join(dir, "state", "web-2")); err != nil || st.Epoch != 1 {
		t.Errorf("web-2's status: epoch %d, %v; want 1", st.Epoch, err)
	}
	if e, _ := r.replica("web-2"); e != 1 {
		t.Errorf("web-2's replica went on to epoch %d", e)
	}
	if p := r.progressOf("web-2"); p.Epoch != 1 {
		t.Errorf("web-2 began epoch %d after its removal", p.Epoch)
	}
	for _, want := range []string{"reload: vm web-2 removed", "stopped after its epoch in flight committed"} {
		if !strings.Contains(r.logs.String(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

// A reload that cannot be applied is refused with its cause, and the agent
// runs on as before.
func TestReloadRefused(t *testing.T) {
	dir := t.TempDir()
	web1 := fileVM(t, dir, "web-1", 64<<10, 100*time.Millisecond)
	r := newReloadRig(t, dir, 0, web1)
	r.waitFor(20*time.Second, "web-1 not replicated", func() bool { e, _ := r.replica("web-1"); return e >= 1 })
	for _, tc := range []struct {
		name string
		mod  func(o *Options)
		want string
		is   error
	}{
		{"no VMs", func(o *Options) { o.VMs = nil }, "no VMs", nil},
		{"bad pacing", func(o *Options) { o.VMs[0].Pacing.MinInterval = 0 }, "continuous pacing needs", nil},
		{"twice", func(o *Options) { o.VMs = append(o.VMs, o.VMs[0]) }, "listed twice", nil},
		{"negative cap", func(o *Options) { o.BandwidthCap = -1 }, "must not be negative", nil},
		{"receiver", func(o *Options) { o.Receiver = "elsewhere" }, "receiver pipe → elsewhere", ErrNeedsRestart},
		{"identity", func(o *Options) { o.Fingerprint = "sha256:bb" }, "identity", ErrNeedsRestart},
		{"added VM without a source", func(o *Options) {
			v := fileVM(t, dir, "web-3", 64<<10, time.Second)
			v.Files = nil
			o.VMs = append(o.VMs, v)
		}, "want exactly one source", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := r.reload(tc.mod)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("reload: %v; want an error with %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("reload: %v; want %v", err, tc.is)
			}
		})
	}
	// Still at the old configuration: web-1 alone, going on.
	r.a.mu.Lock()
	n, pc := len(r.a.loops), r.a.o.VMs[0].Pacing
	r.a.mu.Unlock()
	if n != 1 || pc != web1.Pacing {
		t.Errorf("after refused reloads: %d loops, pacing %+v", n, pc)
	}
	before, _ := r.replica("web-1")
	r.waitFor(20*time.Second, "web-1 stopped after the refused reloads", func() bool { e, ok := r.replica("web-1"); return e >= before+2 && ok })
	if s := r.logs.String(); strings.Contains(s, "reload: vm") || strings.Contains(s, "reload: bandwidth") {
		t.Errorf("a refused reload logged a change:\n%s", s)
	}
}

// A VM's pacing changes from its next decision: from a long interval to a
// short one, the loop sleeping out the long one keeps sleeping; from a
// short one to a long one, epochs stop following each other.
func TestReloadPacing(t *testing.T) {
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state", "web-1")
	epochs := func() uint64 {
		st, err := ReadStatus(stateDir)
		if err != nil {
			return 0
		}
		return st.Epochs
	}
	r := newReloadRig(t, dir, 0, fileVM(t, dir, "web-1", 64<<10, time.Hour))
	// The sender's status is written after the loop decided when the next
	// epoch starts (the replica commits before the sender hears of it).
	r.waitFor(20*time.Second, "web-1 not replicated", func() bool { return epochs() >= 1 })
	if err := r.reload(func(o *Options) { o.VMs[0].Pacing.MinInterval = 100 * time.Millisecond }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if n := epochs(); n != 1 {
		t.Fatalf("%d epochs within the old interval of an hour", n)
	}
	if !strings.Contains(r.logs.String(), "reload: vm web-1 pacing changed") {
		t.Error("no log line for the pacing")
	}

	dir = t.TempDir()
	stateDir = filepath.Join(dir, "state", "web-1")
	r = newReloadRig(t, dir, 0, fileVM(t, dir, "web-1", 64<<10, 100*time.Millisecond))
	r.waitFor(20*time.Second, "web-1 not replicated", func() bool { return epochs() >= 2 })
	if err := r.reload(func(o *Options) { o.VMs[0].Pacing.MinInterval = time.Hour }); err != nil {
		t.Fatal(err)
	}
	before := epochs()
	// At most the epoch in flight or already due commits, then the loop
	// sleeps an hour: at the old pacing 2 s would hold about 20 epochs.
	time.Sleep(2 * time.Second)
	if n := epochs(); n > before+2 {
		t.Fatalf("%d epochs in 2 s after the interval became an hour", n-before)
	}
}

func TestCap(t *testing.T) {
	c, err := NewCap(0, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	for _, rate := range []float64{1e6, 0, 5e6} {
		if err := c.Set(rate); err != nil {
			t.Fatal(err)
		}
		if c.Rate() != rate {
			t.Errorf("rate %g, want %g", c.Rate(), rate)
		}
	}
	if err := c.Set(-1); err == nil {
		t.Error("negative cap accepted")
	}
	if _, err := NewCap(-1, nil); err == nil {
		t.Error("negative cap accepted")
	}
}

// A VM changed otherwise than in pacing is replaced after its epoch in
// flight: the new loop goes on from the committed epochs, in the same
// state directory.
func TestReloadReplacesChangedVM(t *testing.T) {
	dir := t.TempDir()
	r := newReloadRig(t, dir, 0, fileVM(t, dir, "web-1", 256<<10, 100*time.Millisecond))
	stateDir := filepath.Join(dir, "state", "web-1")
	r.waitFor(20*time.Second, "web-1 not replicated", func() bool {
		st, err := ReadStatus(stateDir)
		return err == nil && st.Epochs >= 2
	})
	r.a.mu.Lock()
	old := r.a.loops[0]
	r.a.mu.Unlock()
	if err := r.reload(func(o *Options) { o.VMs[0].Dedup = !o.VMs[0].Dedup }); err != nil {
		t.Fatal(err)
	}
	r.waitFor(20*time.Second, "the old loop did not end", func() bool {
		select {
		case <-old.exited:
			return true
		default:
			return false
		}
	})
	st, err := ReadStatus(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	r.waitFor(20*time.Second, "the new loop committed nothing", func() bool {
		r.a.mu.Lock()
		defer r.a.mu.Unlock()
		return len(r.a.loops) == 1 && r.a.loops[0] != old && r.a.loops[0].vm.Dedup == r.o.VMs[0].Dedup
	})
	r.waitFor(20*time.Second, "web-1's epochs did not go on", func() bool {
		now, err := ReadStatus(stateDir)
		e, whole := r.replica("web-1")
		return err == nil && now.Epochs >= st.Epochs+2 && now.Epoch > st.Epoch && e == now.Epoch && whole
	})
	if !strings.Contains(r.logs.String(), "reload: vm web-1 changed") || !strings.Contains(r.logs.String(), "reload: vm web-1 started") {
		t.Error("no log line for the replacement")
	}
}
