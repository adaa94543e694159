package agent

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drsync/drsync/ratelimit"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/wire"
)

// mutatingRunner rewrites part of the disk image before each epoch after
// the first, as a guest would between cuts.
type mutatingRunner struct {
	inner  epochRunner
	before func(epoch int)
	n      int
}

func (m *mutatingRunner) RunEpoch(ctx context.Context) (*sender.Result, error) {
	m.n++
	m.before(m.n)
	return m.inner.RunEpoch(ctx)
}

// A link that slows in the middle of an epoch: the status predicts a breach,
// and the warning is logged, while the epoch is still being sent and long
// before the lag reaches the target, not at the commit after it.
func TestLiveBreachWhileSending(t *testing.T) {
	const (
		target    = 30 * time.Second
		diskSize  = 32 << 20
		block     = 64 << 10
		fast      = 16e6 // bytes/s
		slow      = 0.5e6
		slowAfter = 2 << 20 // data bytes of the second epoch sent at the fast rate
	)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	disk := make([]byte, diskSize)
	for i := range disk {
		disk[i] = byte(rng.Uint32())
	}
	diskPath := filepath.Join(dir, "web-1.raw")
	if err := os.WriteFile(diskPath, disk, 0o600); err != nil {
		t.Fatal(err)
	}

	stateDir := filepath.Join(dir, "state", "web-1")
	v := VM{Name: "web-1", StateDir: stateDir, Dedup: true,
		Pacing: Pacing{Mode: Continuous, RPOTarget: target, MinInterval: 2 * time.Second, Compression: wire.CompressNone},
		Files:  &sender.FileSourceOptions{Disks: []sender.FileDisk{{Name: "vda", Path: diskPath, Format: "raw", BlockSize: block}}, Now: time.Now}}

	rcv, err := receiver.New(receiver.Options{Root: "/replicas", FS: memfs.New(), AckBytes: 256 << 10, Now: time.Now,
		Authorize: func(receiver.Peer, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	lim, err := ratelimit.New(ratelimit.Options{Rate: fast, Burst: 64 << 10, Now: time.Now, Sleep: SleepCtx})
	if err != nil {
		t.Fatal(err)
	}
	dialer := CappedDialer(testkit.PipeDialer(rcv, receiver.Peer{Fingerprint: "sha256:aa", Name: "site-a"}), lim)

	var logs hosttools.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a, err := New(Options{VMs: []VM{v}, Dialer: dialer, Logger: log, Retries: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	l := a.loops[0]
	l.liveEvery = 250 * time.Millisecond
	// Before the second epoch the guest rewrites every other block: half
	// the disk in 256 extents of 64 KiB, so that the sender reports
	// progress often whatever the rate. At the slow rate they take 34 s.
	var second atomic.Bool
	l.runner = &mutatingRunner{inner: l.runner, before: func(n int) {
		if n != 2 {
			return
		}
		f, err := os.OpenFile(diskPath, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		buf := make([]byte, block)
		for off := int64(0); off < diskSize; off += 2 * block {
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			if _, err := f.WriteAt(buf, off); err != nil {
				t.Error(err)
			}
		}
		second.Store(true)
	}}

	ctx, cancel := context.WithTimeout(context.Background(), 2*target)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- l.run(ctx) }()
	defer func() {
		cancel()
		<-runErr
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	}()

	// Slow the link once the second epoch is under way.
	var slowed time.Time
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-runErr:
			runErr <- err
			t.Fatalf("the loop stopped: %v", err)
		case <-ctx.Done():
			t.Fatal("no breach shown")
		case <-tick.C:
		}
		if slowed.IsZero() && second.Load() {
			if p, _ := l.live.get(); p.AllBytes > 0 && p.AllBytes-p.LeftBytes >= slowAfter && p.LeftBytes > 0 && p.Epoch == 2 {
				if err := lim.SetRate(slow); err != nil {
					t.Fatal(err)
				}
				slowed = time.Now()
			}
		}
		row, err := ReadStatus(stateDir)
		if err != nil {
			continue // not written yet
		}
		if row.Flow == nil || !row.Flow.BreachPredicted {
			if row.Epoch >= 2 {
				t.Fatalf("epoch %d committed without a breach shown while it was sent", row.Epoch)
			}
			if !slowed.IsZero() && time.Since(slowed) > target {
				t.Fatalf("no breach %s after the link slowed", time.Since(slowed).Round(time.Second))
			}
			continue
		}
		if slowed.IsZero() {
			t.Fatalf("breach shown before the link slowed: %s", row.Flow.Plan)
		}
		// The lag is the age of the last committed cut, the first epoch's.
		lag := time.Since(row.Cut)
		t.Logf("breach %s after the link slowed, lag %s (target %s): %s", time.Since(slowed).Round(time.Millisecond), lag.Round(time.Millisecond), target, row.Flow.Plan)
		if row.Epoch != 1 {
			t.Errorf("breach shown at epoch %d; want while the second is sent", row.Epoch)
		}
		if lag >= target {
			t.Errorf("breach shown at lag %s, not before the target %s", lag, target)
		}
		if !strings.Contains(row.Flow.Plan, "in flight") {
			t.Errorf("plan %q says nothing of the epoch in flight", row.Flow.Plan)
		}
		break
	}
	// The warning was logged when the breach began.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "RPO target will be missed at the live goodput") {
		if time.Now().After(deadline) {
			t.Fatal("no warning logged")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
