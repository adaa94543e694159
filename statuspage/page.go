package statuspage

import (
	"fmt"
	"time"

	"github.com/drsync/drsync/replica/grouppoint"
)

// Source tells the page what to show. It is called at each request and at
// each background sample, so it must be cheap and safe for concurrent use.
type Source interface {
	Snapshot(now time.Time) Page
}

// SourceFunc adapts a function to Source.
type SourceFunc func(now time.Time) Page

// Snapshot implements Source.
func (f SourceFunc) Snapshot(now time.Time) Page { return f(now) }

// Page is what the page shows at one moment.
type Page struct {
	Role string // "sender" or "receiver", for the title
	VMs  []VM
	// ConsistencyGroups are each group's newest complete group point (a
	// receiver's; none on a sender's page): what a failover of the group
	// resumes, its RPO lag now minus its Time.
	ConsistencyGroups []grouppoint.GroupPoint
}

// VM is one VM's row. Zero values mean unknown or not applicable (a
// receiver knows no RPO target nor guest pause; a sender no recovery
// points nor drills) and show as a dash.
type VM struct {
	Name  string
	Group string
	// Epoch is the newest committed epoch and Cut its cut; the RPO lag is
	// now minus Cut.
	Epoch uint64
	Cut   time.Time
	// RPOTarget is the VM's target lag; BreachPredicted says the sender
	// expects to miss it at the measured rates.
	RPOTarget       time.Duration
	BreachPredicted bool
	// LastPause is how long the last cut stopped the guest.
	LastPause time.Duration
	// Goodput is the last epoch's wire bytes over its send time, bytes/s.
	Goodput float64
	// Points counts the recovery points a failover can resume, the
	// committed epoch included.
	Points int
	Drill  *Drill // nil: no drill yet
	// Failures counts failed attempts since the last committed epoch;
	// LastError is what is failing now (empty when nothing is).
	Failures  int
	LastError string
	// GuestPaused, when set, says why the protected guest is paused when
	// it should run; PausedSince is when that was first noticed.
	GuestPaused string
	PausedSince time.Time
	// DomainHeld, when set, says why protection of a libvirt domain
	// waits (shut off, migrating away, migrated to another host).
	DomainHeld string
}

// Drill is the outcome of a VM's last failover drill.
type Drill struct {
	Epoch  uint64 // the epoch the drill's copy ran from; 0 unknown
	At     time.Time
	OK     bool
	Detail string
}

// Lag is the VM's RPO lag at now; ok is false before its first epoch.
func (v *VM) Lag(now time.Time) (lag time.Duration, ok bool) {
	if v.Cut.IsZero() {
		return 0, false
	}
	return max(now.Sub(v.Cut), 0), true
}

// Trouble says what is wrong with the VM at now, most urgent first; none
// for a healthy VM.
func (v *VM) Trouble(now time.Time) []string {
	var out []string
	if v.DomainHeld != "" {
		out = append(out, v.DomainHeld)
	}
	if v.GuestPaused != "" {
		s := "guest paused"
		if !v.PausedSince.IsZero() {
			s += " since " + clock(v.PausedSince)
		}
		out = append(out, s+": "+v.GuestPaused)
	}
	if lag, ok := v.Lag(now); ok && v.RPOTarget > 0 && lag > v.RPOTarget {
		out = append(out, fmt.Sprintf("RPO lag %s exceeds the target %s", duration(lag), duration(v.RPOTarget)))
	}
	if v.BreachPredicted {
		out = append(out, fmt.Sprintf("RPO target %s will be missed at the measured rates", duration(v.RPOTarget)))
	}
	switch {
	case v.Failures > 0:
		s := fmt.Sprintf("%d failed attempt(s) since the last committed epoch", v.Failures)
		if v.LastError != "" {
			s += ": " + v.LastError
		}
		out = append(out, s)
	case v.LastError != "":
		out = append(out, "failing: "+v.LastError)
	}
	if d := v.Drill; d != nil && !d.OK {
		s := "last failover drill FAILED at " + clock(d.At)
		if d.Detail != "" {
			s += ": " + d.Detail
		}
		out = append(out, s)
	}
	return out
}
