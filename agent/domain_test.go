package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/drsync/drsync/libvirtvm/lifecycle"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/sender"
)

// scriptedDomain is a domain's lifecycle fed by the test, decided by the
// real lifecycle.Machine: the event feed a Watcher would give.
type scriptedDomain struct {
	mu      sync.Mutex
	m       lifecycle.Machine
	changed chan struct{}
	checks  int
}

func newScriptedDomain() *scriptedDomain {
	d := &scriptedDomain{changed: make(chan struct{})}
	d.m.Step(lifecycle.Event{Type: lifecycle.Observed, State: lifecycle.Running, At: time.Now()})
	return d
}

func (d *scriptedDomain) feed(ev lifecycle.Event) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ev.At = time.Now()
	if d.m.Step(ev).Changed {
		close(d.changed)
		d.changed = make(chan struct{})
	}
}

func (d *scriptedDomain) State() lifecycle.State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m.State()
}

func (d *scriptedDomain) Posture() lifecycle.Action {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m.Posture()
}

func (d *scriptedDomain) Changed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.changed
}

func (d *scriptedDomain) Check(context.Context) lifecycle.Action {
	d.mu.Lock()
	d.checks++
	d.mu.Unlock()
	return d.Posture()
}

func (d *scriptedDomain) Close() {}

// domainRunner is the sender as the gate sees it: each epoch either
// commits or fails with what the test says.
type domainRunner struct {
	mu     sync.Mutex
	epochs int
	fail   error
	during func() // called inside the epoch, before it returns
}

func (r *domainRunner) RunEpoch(ctx context.Context) (*sender.Result, error) {
	r.mu.Lock()
	r.epochs++
	n, err, during := r.epochs, r.fail, r.during
	r.fail, r.during = nil, nil
	r.mu.Unlock()
	if during != nil {
		during()
	}
	if err != nil {
		return nil, err
	}
	return &sender.Result{Epoch: uint64(n)}, nil
}

func (r *domainRunner) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.epochs
}

var (
	evDestroyed    = lifecycle.Event{Type: lifecycle.Stopped, Detail: lifecycle.StoppedDestroyed}
	evShutdown     = lifecycle.Event{Type: lifecycle.Stopped, Detail: lifecycle.StoppedShutdown}
	evStarted      = lifecycle.Event{Type: lifecycle.Started, Detail: lifecycle.StartedBooted}
	evIteration    = lifecycle.Event{Type: lifecycle.MigrationIteration}
	evResumedMig   = lifecycle.Event{Type: lifecycle.Resumed, Detail: lifecycle.ResumedMigrated}
	evSuspendedMig = lifecycle.Event{Type: lifecycle.Suspended, Detail: lifecycle.SuspendedMigrated}
	evMigrated     = lifecycle.Event{Type: lifecycle.Stopped, Detail: lifecycle.StoppedMigrated}
)

// TestDomainGate: while libvirt has the domain shut off or migrating
// away, no epoch is attempted and nothing fails; protection resumes by
// itself when it starts again or the migration fails; after a migration
// away no epoch runs and no error is returned; an epoch the domain's stop
// broke is not a failure.
func TestDomainGate(t *testing.T) {
	disconnected := fmt.Errorf("libvirt: domain %q: %w", "web-1", qmp.ErrDisconnected)
	tests := []struct {
		name string
		// before is fed before the epoch; during, while it runs (and the
		// epoch then fails with fail); later, after hold is seen.
		before, during, later []lifecycle.Event
		fail                  error
		lateEvent             time.Duration // the event trails the failure
		wantHold              string        // in the status while held; "" if not held
		wantEpochs            int           // run by the time the gate returns
	}{
		{name: "running", wantEpochs: 1},
		{name: "shut down, then started", before: []lifecycle.Event{evShutdown}, later: []lifecycle.Event{evStarted},
			wantHold: "domain shut down at", wantEpochs: 1},
		{name: "destroyed, then started", before: []lifecycle.Event{evDestroyed}, later: []lifecycle.Event{evStarted},
			wantHold: "destroyed (forced off) by libvirt", wantEpochs: 1},
		{name: "outgoing migration that fails", before: []lifecycle.Event{evIteration, evSuspendedMig}, later: []lifecycle.Event{evResumedMig},
			wantHold: "domain migrating (outgoing)", wantEpochs: 1},
		{name: "destroyed during the epoch", during: []lifecycle.Event{evDestroyed}, fail: disconnected, later: []lifecycle.Event{evStarted},
			wantHold: "destroyed", wantEpochs: 2},
		{name: "the stop event trails the failure", during: []lifecycle.Event{evDestroyed}, lateEvent: 300 * time.Millisecond, fail: disconnected,
			later: []lifecycle.Event{evStarted}, wantHold: "destroyed", wantEpochs: 2},
		{name: "libvirt's refusal as QEMU dies, then the event", during: []lifecycle.Event{evDestroyed}, lateEvent: 50 * time.Millisecond,
			fail:  fmt.Errorf("livecut: migrate: %w", libvirt.Error{Code: uint32(libvirt.ErrInternalError), Message: "Unable to read from monitor: Connection reset by peer"}),
			later: []lifecycle.Event{evStarted}, wantHold: "destroyed", wantEpochs: 2},
		{name: "a failure of its own is returned", fail: errors.New("link down"), wantEpochs: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newScriptedDomain()
			r := &domainRunner{fail: tc.fail}
			var interrupted []string
			g := &domainGate{next: r, w: d, grace: 5 * time.Second, interrupted: func(err error, st lifecycle.State) {
				interrupted = append(interrupted, st.Describe())
			}}
			for _, ev := range tc.before {
				d.feed(ev)
			}
			if len(tc.during) > 0 {
				r.during = func() {
					feed := func() {
						for _, ev := range tc.during {
							d.feed(ev)
						}
					}
					if tc.lateEvent > 0 {
						time.AfterFunc(tc.lateEvent, feed)
					} else {
						feed()
					}
				}
			}
			type result struct {
				res *sender.Result
				err error
			}
			done := make(chan result, 1)
			go func() {
				res, err := g.RunEpoch(context.Background())
				done <- result{res, err}
			}()
			if tc.wantHold != "" {
				deadline := time.Now().Add(10 * time.Second)
				for !d.State().Holding() {
					if time.Now().After(deadline) {
						t.Fatal("protection never held")
					}
					time.Sleep(time.Millisecond)
				}
				if got := d.State().Describe(); !strings.Contains(got, tc.wantHold) {
					t.Errorf("held with %q, want %q in it", got, tc.wantHold)
				}
				// Held: no epoch is attempted however long it lasts.
				n := r.count()
				select {
				case res := <-done:
					t.Fatalf("the gate returned while the domain is held: %+v", res)
				case <-time.After(200 * time.Millisecond):
				}
				if r.count() != n {
					t.Errorf("%d epochs attempted while held", r.count()-n)
				}
				for _, ev := range tc.later {
					d.feed(ev)
				}
			}
			select {
			case res := <-done:
				if tc.fail != nil && tc.wantHold == "" {
					if !errors.Is(res.err, tc.fail) {
						t.Errorf("error %v, want %v", res.err, tc.fail)
					}
				} else if res.err != nil {
					t.Errorf("error %v", res.err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("protection did not resume")
			}
			if r.count() != tc.wantEpochs {
				t.Errorf("%d epochs run, want %d", r.count(), tc.wantEpochs)
			}
			if tc.fail != nil && tc.wantHold != "" && len(interrupted) != 1 {
				t.Errorf("interruptions reported: %q, want one", interrupted)
			}
		})
	}
}

// TestDomainGateMigratedAway: a domain migrated to another host is not
// cut here, without an error, until it starts here again; with Once the
// epoch is refused at once with ErrDomainNotRunning, which is not retried.
func TestDomainGateMigratedAway(t *testing.T) {
	d := newScriptedDomain()
	r := &domainRunner{}
	d.feed(evIteration)
	d.feed(evMigrated)
	if !strings.Contains(d.State().Describe(), "migrated to another host") {
		t.Errorf("status %q", d.State().Describe())
	}
	_, err := (&domainGate{next: r, w: d, once: true}).RunEpoch(context.Background())
	if !errors.Is(err, ErrDomainNotRunning) || retryable(err) {
		t.Errorf("once: %v (retryable %v), want ErrDomainNotRunning, not retryable", err, retryable(err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = (&domainGate{next: r, w: d}).RunEpoch(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || r.count() != 0 {
		t.Errorf("gate returned %v after %d epochs; want it waiting, none run", err, r.count())
	}
	// Migrated back.
	d.feed(lifecycle.Event{Type: lifecycle.Started, Detail: lifecycle.StartedMigrated})
	if _, err := (&domainGate{next: r, w: d}).RunEpoch(context.Background()); err != nil || r.count() != 1 {
		t.Errorf("after the domain came back: %v, %d epochs", err, r.count())
	}
}

// TestRetireWhileWaitingForDomain: a reload that removes a VM whose loop
// waits for its shut-off domain stops the loop at once (no epoch is in
// flight), whether it comes before or during the wait.
func TestRetireWhileWaitingForDomain(t *testing.T) {
	for _, before := range []bool{false, true} {
		t.Run(fmt.Sprintf("retired before the wait %v", before), func(t *testing.T) {
			l := &vmLoop{}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			l.ctl.cancel = cancel
			d := newScriptedDomain()
			d.feed(evDestroyed)
			r := &domainRunner{}
			g := &domainGate{next: r, w: d, waiting: l.waitDomain, resumed: l.domainBack}
			if !l.begin() {
				t.Fatal("not begun")
			}
			if before {
				l.retire()
			}
			done := make(chan error, 1)
			go func() {
				_, err := g.RunEpoch(ctx)
				done <- err
			}()
			if !before {
				deadline := time.Now().Add(10 * time.Second)
				for {
					l.ctl.mu.Lock()
					w := l.ctl.waiting
					l.ctl.mu.Unlock()
					if w {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("the gate never waited")
					}
					time.Sleep(time.Millisecond)
				}
				l.retire()
			}
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) || r.count() != 0 {
					t.Errorf("gate returned %v after %d epochs; want it stopped, none run", err, r.count())
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a retired loop still waits for its domain")
			}
		})
	}
}
