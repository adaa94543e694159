package agent

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/epochctl"
	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/sender"
)

// stopClock is a member that records when it was stopped (the group's
// cut instant) on the test's clock.
type stopClock struct {
	fakeGuest
	now     func() time.Time
	stopped *time.Time
}

func (s *stopClock) Stop(ctx context.Context) error {
	*s.stopped = s.now()
	return s.fakeGuest.Stop(ctx)
}

// TestGroupRunPacedByRPO: once every member has committed its part of a
// group cut, the group's controller plans the next cut from the members'
// summed epochs, and the next cut waits for that instant, however early
// the members ask. The plan follows a member whose dirty rate jumps while
// the shared link slows.
func TestGroupRunPacedByRPO(t *testing.T) {
	o := groupcut.Options{Name: "g", Members: []string{"a", "b"}, Local: []string{"a", "b"}, RPO: time.Minute, StepTimeout: time.Second}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var offset time.Duration // the fake clock runs ahead of the real one by what was slept
	now := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return time.Now().Add(offset)
	}
	sleep := func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		offset += d
		mu.Unlock()
		return nil
	}
	g := newGroupRun(o, now, sleep, slog.New(slog.DiscardHandler))
	stopped := map[string]*time.Time{"a": new(time.Time), "b": new(time.Time)}
	for _, m := range o.Members {
		s := &stopClock{fakeGuest: fakeGuest{running: true}, now: now, stopped: stopped[m]}
		g.members[m] = func(context.Context) (GroupSteps, error) { return s, nil }
	}
	// The reference: the same controller fed the same epochs.
	ref, err := epochctl.NewGroup(epochctl.Config{RPOTarget: o.RPO, Levels: []epochctl.Level{epochctl.LevelNone}})
	if err != nil {
		t.Fatal(err)
	}
	type part struct {
		changed, wire uint64
		send          time.Duration
	}
	const MB = 1_000_000
	rounds := []struct {
		name string
		a, b part
	}{
		{"first", part{400 * MB, 400 * MB, 8 * time.Second}, part{200 * MB, 200 * MB, 12 * time.Second}},
		{"steady", part{40 * MB, 40 * MB, 800 * time.Millisecond}, part{20 * MB, 20 * MB, 1200 * time.Millisecond}},
		{"b dirties more", part{40 * MB, 40 * MB, 800 * time.Millisecond}, part{300 * MB, 300 * MB, 6800 * time.Millisecond}},
		{"link slows", part{40 * MB, 40 * MB, 4 * time.Second}, part{300 * MB, 300 * MB, 28 * time.Second}},
	}
	cut := now()
	prev := time.Time{}
	for _, r := range rounds {
		// Each member commits its part of the cut, the longest send last.
		var parts []epochctl.Observation
		var last time.Time // the last member's commit: the group's decision
		for _, m := range []struct {
			vm string
			p  part
		}{{"a", r.a}, {"b", r.b}} {
			at := cut.Add(m.p.send)
			if at.After(now()) {
				sleep(context.Background(), at.Sub(now()))
			}
			commit := now()
			last = commit
			g.committed(m.vm, &sender.Result{Cut: cut, DataBytes: m.p.changed, WireBytes: m.p.wire, SendTime: m.p.send}, commit)
			var iv time.Duration
			if !prev.IsZero() {
				iv = cut.Sub(prev)
			}
			parts = append(parts, epochctl.Observation{Cut: cut, Committed: commit, Interval: iv,
				ChangedBytes: int64(m.p.changed), WireBytes: int64(m.p.wire), SendTime: m.p.send})
		}
		ref.Observe(parts)
		want := ref.Decide(last)
		if got := g.nextCut(); !got.Equal(want.NextCut) {
			t.Fatalf("%s: planned %v, the controller says %v (%s)", r.name, got, want.NextCut, want.Reason)
		}
		// Both members ask for their next snapshot at once.
		var wg sync.WaitGroup
		for _, m := range o.Members {
			wg.Go(func() {
				s, err := g.source(m).Snapshot(context.Background())
				if err != nil {
					t.Errorf("%s: %s: %v", r.name, m, err)
					return
				}
				s.Close()
			})
		}
		wg.Wait()
		at := *stopped["a"]
		// Honest margins: the cut is not early, and late by no more
		// than the real time the group's steps took.
		if at.Before(want.NextCut) || at.After(want.NextCut.Add(5*time.Second)) {
			t.Errorf("%s: cut at %v, planned %v (interval %s: %s)", r.name, at, want.NextCut, want.Interval, want.Reason)
		}
		t.Logf("%s: cut %s after the previous, plan %s", r.name, at.Sub(cut).Round(time.Millisecond), want.Reason)
		prev, cut = cut, at
	}
}

// TestValidateGroupsMemberPacing: a member's own schedule or rpo_target
// conflicts with the group's rpo, which paces its cuts; a min_interval is
// merely unused.
func TestValidateGroupsMemberPacing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pacing  Pacing
		wantErr bool
	}{
		{"min_interval", Pacing{Mode: Continuous, MinInterval: 5 * time.Second}, false},
		{"rpo_target", Pacing{Mode: Continuous, RPOTarget: time.Minute}, true},
		{"schedule", Pacing{Mode: Scheduled, Schedule: time.Minute}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{
				VMs:    []VM{{Name: "a", Live: &livecut.Options{}, Pacing: tc.pacing}, {Name: "b", Live: &livecut.Options{}, Pacing: Pacing{Mode: Continuous}}},
				Groups: []groupcut.Options{{Name: "g", Members: []string{"a", "b"}, Local: []string{"a", "b"}, RPO: time.Minute}},
			}
			err := o.validateGroups()
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want an error: %v", err, tc.wantErr)
			}
		})
	}
}

// absent is a leader's view of followers none of which is connected.
type absent struct{}

func (absent) Has(string) bool           { return false }
func (absent) Send(groupcut.Msg)         {}
func (absent) Recv() <-chan groupcut.Msg { return nil }

// TestGroupRunWaitsForAbsentFollower: a cut that cannot start because a
// follower is not connected is retried every RetryAfter, not in a loop
// that spins (and floods the log) until the follower is back.
func TestGroupRunWaitsForAbsentFollower(t *testing.T) {
	o := groupcut.Options{Name: "g", Members: []string{"a", "b"}, Local: []string{"a"}, RPO: time.Minute, StepTimeout: time.Second,
		Listen: "127.0.0.1:1", Peers: []string{"sha256:" + strings.Repeat("ab", 32)}}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var mu sync.Mutex
	var slept []time.Duration
	sleep := func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		defer mu.Unlock()
		if slept = append(slept, d); len(slept) == 3 {
			cancel()
		}
		return ctx.Err()
	}
	g := newGroupRun(o, time.Now, sleep, slog.New(slog.DiscardHandler))
	g.remote = absent{}
	g.members["a"] = func(context.Context) (GroupSteps, error) { return &fakeGuest{running: true}, nil }
	if _, err := g.source("a").Snapshot(ctx); err == nil {
		t.Fatal("a snapshot without the follower")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(slept) < 3 {
		t.Fatalf("waits between attempts: %v; want at least 3 (the test's timeout ended a loop that does not wait)", slept)
	}
	for _, d := range slept {
		if d != o.RetryAfter {
			t.Errorf("waited %v between attempts, want RetryAfter %v", d, o.RetryAfter)
		}
	}
}
