package livecut_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/livecut/livecuttest"
	"github.com/drsync/drsync/testkit/hosttools"
)

// idleTracker is a RAMTracker of a guest that never writes.
type idleTracker struct{}

func (idleTracker) Scan() ([]dirtylog.Range, error)       { return nil, nil }
func (idleTracker) ReadAt(p []byte, _ int64) (int, error) { clear(p); return len(p), nil }
func (idleTracker) Close() error                          { return nil }

// Full cuts of tracked VMs hold their parsed RAM one at a time in a
// process: while one VM's full cut is open, another tracked VM's full cut
// waits for it (and gives up with its context), and goes ahead once the
// first is closed. A VM that does not track RAM cuts full every time and
// never waits.
func TestTrackedFullCutsOneAtATime(t *testing.T) {
	hosttools.Need(t, "qemu-img", "qemu-nbd")
	newSource := func(track bool) *livecut.Source {
		fake := livecuttest.New(t, map[string]int64{"disk0": 1 << 20})
		o := livecut.Options{QMPSocket: "qmp.sock", Dial: fake.Dial, Now: time.Now,
			Disks:   []livecut.Disk{{Name: "vda", Node: "disk0"}},
			WorkDir: filepath.Join(hosttools.ShortTempDir(t, "fc"), "w")}
		if track {
			o.SharedRAM = "pc.ram"
			o.TrackRAM = func() (livecut.RAMTracker, error) { return idleTracker{}, nil }
		}
		src, err := livecut.New(o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		return src
	}
	for _, tc := range []struct {
		name        string
		secondTrack bool
		waits       bool
	}{
		{"tracked VM waits", true, true},
		{"untracked VM does not wait", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, second := newSource(true), newSource(tc.secondTrack)
			snap, err := first.Snapshot(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := first.LastCut().RAMPath; got != livecut.RAMFull {
				t.Fatalf("first cut took the %q path, want %q", got, livecut.RAMFull)
			}
			// Generous for a loaded machine: the cut itself takes
			// milliseconds against the fake.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			snap2, err := second.Snapshot(ctx)
			cancel()
			switch {
			case tc.waits && !errors.Is(err, context.DeadlineExceeded):
				t.Fatalf("second full cut while the first is open: %v, want it to wait until its context ends", err)
			case !tc.waits && err != nil:
				t.Fatalf("second cut: %v", err)
			case !tc.waits:
				if err := snap2.Close(); err != nil {
					t.Fatal(err)
				}
			}
			if err := snap.Close(); err != nil {
				t.Fatal(err)
			}
			if !tc.waits {
				return
			}
			snap2, err = second.Snapshot(context.Background())
			if err != nil {
				t.Fatalf("second full cut after the first closed: %v", err)
			}
			if err := snap2.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
