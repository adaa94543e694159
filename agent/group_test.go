package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/vmspec"
)

// fakeGuest is a member whose steps only record the guest's state; hang
// makes one step block until its context ends (a hung QEMU or member).
type fakeGuest struct {
	mu      sync.Mutex
	running bool
	aborted int
	hang    groupcut.Kind
	fail    groupcut.Kind
	closed  bool
}

func (f *fakeGuest) step(ctx context.Context, k groupcut.Kind) error {
	if f.hang == k {
		<-ctx.Done()
		return ctx.Err()
	}
	if f.fail == k {
		return errors.New("refused by QEMU")
	}
	return nil
}

func (f *fakeGuest) WaitConverged(ctx context.Context) error { return f.step(ctx, groupcut.Prepare) }

func (f *fakeGuest) Stop(ctx context.Context) error {
	f.mu.Lock()
	f.running = false
	f.mu.Unlock()
	return f.step(ctx, groupcut.Stop)
}

func (f *fakeGuest) Resume(ctx context.Context, tag *vmspec.GroupCut) (*sender.Snapshot, error) {
	f.mu.Lock()
	f.running = true
	f.mu.Unlock()
	return &sender.Snapshot{Group: tag, Close: func() error { f.closed = true; return nil }}, nil
}

func (f *fakeGuest) Abort() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running = true
	f.aborted++
	return nil
}

func TestCutGroup(t *testing.T) {
	tests := []struct {
		name       string
		hang, fail map[string]groupcut.Kind
		wantErr    bool
	}{
		{name: "committed"},
		{name: "member hangs while stopping", hang: map[string]groupcut.Kind{"b": groupcut.Stop}, wantErr: true},
		{name: "member hangs converging", hang: map[string]groupcut.Kind{"c": groupcut.Prepare}, wantErr: true},
		{name: "member fails to stop", fail: map[string]groupcut.Kind{"a": groupcut.Stop}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := groupcut.Options{Name: "g", Members: []string{"c", "a", "b"}, Local: []string{"a", "b", "c"}, RPO: time.Minute,
				PrepareTimeout: 300 * time.Millisecond, StepTimeout: 100 * time.Millisecond}
			if err := o.Validate(); err != nil {
				t.Fatal(err)
			}
			guests := map[string]*fakeGuest{}
			members := map[string]GroupMember{}
			for _, m := range o.Members {
				g := &fakeGuest{running: true, hang: tc.hang[m], fail: tc.fail[m]}
				guests[m] = g
				members[m] = func(context.Context) (GroupSteps, error) { return g, nil }
			}
			l := groupcut.NewLeader(o, 41)
			t0 := time.Now()
			res, err := CutGroup(context.Background(), o, l, members, time.Now, nil)
			took := time.Since(t0)
			t.Logf("took %v, err %v", took, err)
			if tc.wantErr {
				if !errors.Is(err, ErrGroupCutAborted) {
					t.Fatalf("error %v; want ErrGroupCutAborted", err)
				}
				if res.Snapshots != nil {
					t.Errorf("an aborted cut kept snapshots")
				}
				// The abort comes at the timeout of the step that hung,
				// not later than the member's own hold bound (honest margin
				// for a loaded machine: 5 s).
				if took > 5*time.Second {
					t.Errorf("the abort took %v", took)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Snapshots) != 3 {
					t.Fatalf("snapshots %v", res.Snapshots)
				}
				for m, s := range res.Snapshots {
					if s.Group == nil || s.Group.Cut != 42 || s.Group.Validate(m) != nil {
						t.Errorf("%s: tag %+v", m, s.Group)
					}
				}
			}
			for m, g := range guests {
				g.mu.Lock()
				if !g.running {
					t.Errorf("%s: guest left stopped", m)
				}
				if tc.wantErr && g.aborted == 0 {
					t.Errorf("%s: cut not aborted", m)
				}
				g.mu.Unlock()
			}
		})
	}
}

// flaky fails its first Stop, then behaves.
type flaky struct {
	fakeGuest
	stops int
}

func (f *flaky) Stop(ctx context.Context) error {
	f.stops++
	if f.stops == 1 {
		f.running = true // QEMU resumed it after the failed completion
		return errors.New("migration failed")
	}
	return f.fakeGuest.Stop(ctx)
}

// TestGroupSourceJoinsEpochs: each member's sender asks its source for a
// snapshot on its own; the group cuts once all have asked, retries a cut
// a member failed, and every member gets the same tag.
func TestGroupSourceJoinsEpochs(t *testing.T) {
	o := groupcut.Options{Name: "g", Members: []string{"a", "b", "c"}, Local: []string{"a", "b", "c"}, RPO: time.Minute, StepTimeout: time.Second}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	var slept []time.Duration
	var mu sync.Mutex
	var offset time.Duration // the fake clock runs ahead of the real one by what was slept
	now := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return time.Now().Add(offset)
	}
	sleep := func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		slept, offset = append(slept, d), offset+d
		mu.Unlock()
		return nil
	}
	g := newGroupRun(o, now, sleep, slog.New(slog.DiscardHandler))
	guests := map[string]GroupSteps{"a": &fakeGuest{running: true}, "b": &flaky{fakeGuest: fakeGuest{running: true}}, "c": &fakeGuest{running: true}}
	for m, s := range guests {
		g.members[m] = func(context.Context) (GroupSteps, error) { return s, nil }
	}
	first := g.leader.Cut()
	type got struct {
		vm   string
		snap *sender.Snapshot
		err  error
	}
	out := make(chan got, 3)
	for _, m := range o.Members {
		go func() {
			time.Sleep(time.Duration(len(m)) * 10 * time.Millisecond)
			s, err := g.source(m).Snapshot(context.Background())
			out <- got{m, s, err}
		}()
	}
	var cut uint64
	for range o.Members {
		r := <-out
		if r.err != nil {
			t.Fatalf("%s: %v", r.vm, r.err)
		}
		if r.snap.Group == nil || r.snap.Group.Validate(r.vm) != nil {
			t.Fatalf("%s: tag %+v", r.vm, r.snap.Group)
		}
		if cut != 0 && r.snap.Group.Cut != cut {
			t.Errorf("%s: cut %d, another member got %d", r.vm, r.snap.Group.Cut, cut)
		}
		cut = r.snap.Group.Cut
	}
	if cut != first+2 {
		t.Errorf("cut %d; want %d (the first attempt aborted, the retry committed)", cut, first+2)
	}
	if len(slept) != 1 || slept[0] <= 0 || slept[0] > o.RetryAfter {
		t.Errorf("waits before retrying: %v (want one, up to %v)", slept, o.RetryAfter)
	}
}
