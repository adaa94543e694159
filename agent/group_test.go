package agent

import (
	"context"
	"errors"
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
