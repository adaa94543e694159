package libvirtvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/drsync/drsync/libvirtvm/lifecycle"
)

// Watcher follows a protected domain's lifecycle through libvirt's
// events (started, stopped, suspended and resumed for a migration, the
// migration job's iterations and completion, undefined) on a libvirt
// connection of its own, and keeps lifecycle's decision of what the
// sender should do. It outlives the domain's QEMU: it follows the domain
// by name across stops, restarts, undefines and a new domain of the same
// name, and reconnects to libvirt when the connection is lost. It never
// fails: until it has heard from libvirt the posture is Protect, as
// without it.
type Watcher struct {
	uri, domain string
	uuid        *libvirt.UUID // when domain is given as a UUID
	now         func() time.Time
	log         *slog.Logger
	notify      func(lifecycle.Decision)
	stop        context.CancelFunc
	exited      chan struct{}

	// stepping orders whole steps, notification included: a Check on
	// another goroutine must not have its decision told after a later
	// one (status then showed a destroyed domain as "not defined").
	stepping sync.Mutex
	mu       sync.Mutex
	m        lifecycle.Machine
	changed  chan struct{} // closed at the next decision that changes something
	conn     *libvirt.Libvirt
}

// WatchOptions configure a Watcher. Notify, if set, is told of each
// decision that changes the state, from the watcher's goroutine.
type WatchOptions struct {
	Now    func() time.Time
	Logger *slog.Logger
	Notify func(lifecycle.Decision)
	// Retry is the pause between attempts to reach libvirt; 2 s if 0.
	Retry time.Duration
}

// Watch starts following the domain (name or UUID) at libvirt uri.
func Watch(uri, domain string, o WatchOptions) *Watcher {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Retry <= 0 {
		o.Retry = 2 * time.Second
	}
	ctx, stop := context.WithCancel(context.Background())
	w := &Watcher{uri: uri, domain: domain, now: o.Now, log: o.Logger, notify: o.Notify, stop: stop,
		exited: make(chan struct{}), changed: make(chan struct{})}
	if u, err := parseUUID(domain); err == nil {
		w.uuid = &u
	}
	go w.run(ctx, o.Retry)
	return w
}

// State is the domain's state as last decided.
func (w *Watcher) State() lifecycle.State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.m.State()
}

// Posture is what the sender should do now.
func (w *Watcher) Posture() lifecycle.Action {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.m.Posture()
}

// Changed is closed at the next change of state.
func (w *Watcher) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// Check asks libvirt for the domain's state and job now (a migration
// begun by someone else sends no event until its first pass over memory
// ends) and returns the posture. Without a connection to libvirt it
// returns the posture as it is.
func (w *Watcher) Check(ctx context.Context) lifecycle.Action {
	w.mu.Lock()
	l := w.conn
	w.mu.Unlock()
	if l != nil {
		if ev, err := w.observe(l); err == nil {
			w.step(ev)
		} else {
			w.log.Debug("libvirt: cannot observe the domain", "err", err)
		}
	}
	return w.Posture()
}

// Close stops the watcher and waits for it.
func (w *Watcher) Close() {
	w.stop()
	<-w.exited
}

func (w *Watcher) step(ev lifecycle.Event) {
	w.stepping.Lock()
	defer w.stepping.Unlock()
	w.mu.Lock()
	d := w.m.Step(ev)
	if d.Changed {
		close(w.changed)
		w.changed = make(chan struct{})
	}
	w.mu.Unlock()
	if d.Changed && w.notify != nil {
		w.notify(d)
	}
}

func (w *Watcher) run(ctx context.Context, retry time.Duration) {
	defer close(w.exited)
	warned := false
	for ctx.Err() == nil {
		err := w.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if !warned {
			w.log.Warn("libvirt: lifecycle events of the domain unavailable; retrying", "uri", w.uri, "err", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// session connects, subscribes, observes the domain (what happened while
// no connection was up) and feeds events until the connection ends.
func (w *Watcher) session(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	l, err := Connect(cctx, w.uri)
	cancel()
	if err != nil {
		return err
	}
	defer l.Disconnect()
	evctx, stop := context.WithCancel(ctx)
	defer stop()
	// One connection: these callbacks share libvirt's numbering.
	var streams [3]<-chan any
	for i, id := range []libvirt.DomainEventID{libvirt.DomainEventIDLifecycle, libvirt.DomainEventIDMigrationIteration, libvirt.DomainEventIDJobCompleted} {
		if streams[i], err = l.SubscribeEvents(evctx, id, libvirt.OptDomain{}); err != nil {
			return fmt.Errorf("libvirt: %s: subscribe to domain events: %w", w.uri, err)
		}
	}
	ev, err := w.observe(l)
	if err != nil {
		return err
	}
	w.step(ev)
	w.mu.Lock()
	w.conn = l
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.conn = nil
		w.mu.Unlock()
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		var raw any
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-l.Disconnected():
			return errors.New("the libvirt connection was lost")
		case <-tick.C:
			w.mu.Lock()
			due := w.m.ProbeDue(w.now())
			w.mu.Unlock()
			if due {
				if ev, err := w.observe(l); err == nil {
					w.step(ev)
				}
			}
			continue
		case raw, ok = <-streams[0]:
		case raw, ok = <-streams[1]:
		case raw, ok = <-streams[2]:
		}
		if !ok {
			return errors.New("a libvirt event stream ended")
		}
		if ev, ok := w.convert(raw); ok {
			w.step(ev)
		}
	}
}

func (w *Watcher) ours(d libvirt.Domain) bool {
	return d.Name == w.domain || (w.uuid != nil && d.UUID == *w.uuid)
}

// convert turns one of libvirt's event messages about this domain into
// lifecycle's input.
func (w *Watcher) convert(raw any) (lifecycle.Event, bool) {
	now := w.now()
	switch m := raw.(type) {
	case *libvirt.DomainEventCallbackLifecycleMsg:
		if !w.ours(m.Msg.Dom) {
			return lifecycle.Event{}, false
		}
		return lifecycle.Event{Type: lifecycle.Type(m.Msg.Event), Detail: int(m.Msg.Detail), At: now}, true
	case *libvirt.DomainEventCallbackMigrationIterationMsg:
		if !w.ours(m.Dom) {
			return lifecycle.Event{}, false
		}
		return lifecycle.Event{Type: lifecycle.MigrationIteration, At: now}, true
	case *libvirt.DomainEventCallbackJobCompletedMsg:
		if !w.ours(m.Dom) {
			return lifecycle.Event{}, false
		}
		return lifecycle.Event{Type: lifecycle.JobCompleted, At: now}, true
	}
	return lifecycle.Event{}, false
}

// observe asks libvirt for the domain's state, and whether an outgoing
// migration job runs.
func (w *Watcher) observe(l *libvirt.Libvirt) (lifecycle.Event, error) {
	ev := lifecycle.Event{Type: lifecycle.Observed, At: w.now()}
	dom, err := LookupDomain(l, w.uri, w.domain)
	if errors.Is(err, ErrNoDomain) {
		ev.State = lifecycle.Absent
		return ev, nil
	}
	if err != nil {
		return ev, err
	}
	state, reason, err := l.DomainGetState(dom, 0)
	if err != nil {
		if isCode(err, libvirt.ErrNoDomain) {
			ev.State = lifecycle.Absent
			return ev, nil
		}
		return ev, fmt.Errorf("libvirt: %s: state of %q: %w", w.uri, dom.Name, err)
	}
	ev.State, ev.Reason = lifecycle.DomState(state), int(reason)
	if ev.State == lifecycle.ShutOff || ev.State == lifecycle.CrashedDom {
		return ev, nil
	}
	typ, params, err := l.DomainGetJobStats(dom, 0)
	if err != nil {
		// Not knowing of a job is no reason to hold protection.
		return ev, nil
	}
	if libvirt.DomainJobType(typ) != libvirt.DomainJobNone {
		for _, p := range params {
			if p.Field == libvirt.DomainJobOperationStr {
				if op, ok := p.Value.I.(int32); ok && libvirt.DomainJobOperation(op) == libvirt.DomainJobOperationStrMigrationOut {
					ev.MigratingOut = true
				}
			}
		}
	}
	return ev, nil
}
