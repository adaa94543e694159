package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/libvirtvm/lifecycle"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/sender"
)

// ErrDomainNotRunning: a libvirt domain is shut off, migrating away or
// gone to another host, so an epoch asked for once cannot be cut.
var ErrDomainNotRunning = errors.New("libvirt domain not running here")

// domainWatch is what the loop needs of a libvirt domain's lifecycle
// (*libvirtvm.Watcher; tests script it).
type domainWatch interface {
	State() lifecycle.State
	Posture() lifecycle.Action
	Changed() <-chan struct{}
	Check(ctx context.Context) lifecycle.Action
	Close()
}

var _ domainWatch = (*libvirtvm.Watcher)(nil)

// domainGate runs epochs of a libvirt domain only while libvirt runs it
// here: while it is shut off or migrating away (or gone away) it waits
// for the next lifecycle change instead of failing epochs, and an epoch
// that the domain's stop broke is waited out the same way rather than
// counted as a failure. It sits between the retrier and the sender.
type domainGate struct {
	next epochRunner
	w    domainWatch
	once bool
	// grace is how long libvirt's lifecycle event may trail the failure
	// the domain's end caused.
	grace time.Duration
	// interrupted is told of an epoch broken by the domain's lifecycle.
	interrupted func(err error, st lifecycle.State)
	// waiting and resumed, if set, are told when the gate begins and ends
	// a wait for the domain: no epoch is in flight then, so a reload may
	// stop the loop at once.
	waiting, resumed func()
}

func (g *domainGate) RunEpoch(ctx context.Context) (*sender.Result, error) {
	for {
		changed := g.w.Changed()
		if g.w.Check(ctx) != lifecycle.Protect {
			if g.once {
				return nil, fmt.Errorf("%s: %w", g.w.State().Describe(), ErrDomainNotRunning)
			}
			if g.waiting != nil {
				g.waiting()
			}
			select {
			case <-ctx.Done():
			case <-changed:
			}
			if g.resumed != nil {
				g.resumed()
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		res, err := g.next.RunEpoch(ctx)
		if err == nil || ctx.Err() != nil {
			return res, err
		}
		if !g.heldAfter(ctx, err, changed) {
			return res, err
		}
		if g.interrupted != nil {
			g.interrupted(err, g.w.State())
		}
	}
}

// heldAfter reports whether the domain's lifecycle holds protection now,
// waiting up to grace for the event when err says the domain went away.
func (g *domainGate) heldAfter(ctx context.Context, err error, changed <-chan struct{}) bool {
	held := func() bool { return g.w.Posture() != lifecycle.Protect }
	if held() || !domainGone(err) {
		return held()
	}
	t := time.NewTimer(g.grace)
	defer t.Stop()
	for {
		select {
		case <-changed:
			if held() {
				return true
			}
			changed = g.w.Changed()
		case <-t.C:
			return held()
		case <-ctx.Done():
			return false
		}
	}
}

// domainGone reports whether err may come from the domain's QEMU going
// away: a lost monitor, a lost snapshot, or libvirt refusing a command
// (QEMU killed under a pass-through command is "Unable to read from
// monitor", whose lifecycle event follows).
func domainGone(err error) bool {
	var le libvirt.Error
	return errors.Is(err, qmp.ErrDisconnected) || errors.Is(err, qmp.ErrNoSocket) ||
		errors.Is(err, livecut.ErrVMGone) || errors.Is(err, sender.ErrSnapshotLost) ||
		errors.Is(err, libvirtvm.ErrNoDomain) || errors.As(err, &le)
}

// DomainStatus is a libvirt domain's lifecycle as the sender last saw it.
type DomainStatus struct {
	State  string    `json:"state"` // running, shut-off, migrating, migrated
	Since  time.Time `json:"since,omitzero"`
	Detail string    `json:"detail"`
	// Held: protection waits for the domain (no cuts, no errors).
	Held bool `json:"held"`
}

func domainStatus(st lifecycle.State) *DomainStatus {
	d := &DomainStatus{State: st.Phase.String(), Detail: st.Describe(), Held: st.Holding()}
	if !st.Since.IsZero() {
		d.Since = st.Since.UTC()
	}
	return d
}

// domainChanged is the watcher's notification of a new lifecycle state:
// logged, and in the status.
func (l *vmLoop) domainChanged(d lifecycle.Decision) {
	msg := d.State.Describe()
	switch d.Action {
	case lifecycle.Hold, lifecycle.Retire:
		l.log.Warn("libvirt: "+msg, "state", d.State.Phase.String())
	case lifecycle.Resync:
		l.log.Info("libvirt: "+msg+"; reconnecting to its new QEMU", "state", d.State.Phase.String())
	default:
		l.log.Info("libvirt: "+msg, "state", d.State.Phase.String())
	}
	l.status.domain(domainStatus(d.State))
	if l.metrics != nil {
		l.metrics.DomainState(l.vm.Name, d.State.Phase.String(), d.State.Holding())
	}
}

// domainInterrupted is the gate's notification of an epoch the domain's
// lifecycle broke: not a failure of replication.
func (l *vmLoop) domainInterrupted(err error, st lifecycle.State) {
	l.log.Info("epoch interrupted by the domain's lifecycle; waiting for the domain", "err", err, "domain", st.Describe())
	l.status.domain(domainStatus(st))
}
