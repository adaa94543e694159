package lifecycle

import (
	"fmt"
	"time"
)

// Type is what happened: libvirt's lifecycle event types (numbered as
// virDomainEventType), then the sender's own inputs.
type Type int

const (
	Defined     Type = 0
	Undefined   Type = 1
	Started     Type = 2
	Suspended   Type = 3
	Resumed     Type = 4
	Stopped     Type = 5
	Shutdown    Type = 6 // the guest is shutting down; QEMU still runs
	PMSuspended Type = 7
	Crashed     Type = 8

	// MigrationIteration: libvirt's migration job on this (source) host
	// finished a pass over memory (VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION).
	MigrationIteration Type = 100
	// JobCompleted: a libvirt job of the domain completed
	// (VIR_DOMAIN_EVENT_ID_JOB_COMPLETED); on the source of a migration it
	// precedes the Stopped event.
	JobCompleted Type = 101
	// Observed: what the sender found asking libvirt (at connection, after
	// a lost connection, before a cut, while a migration is quiet).
	Observed Type = 102
)

// Details of Stopped, Started, Suspended and Resumed, numbered as
// libvirt's virDomainEvent*DetailType.
const (
	StoppedShutdown     = 0
	StoppedDestroyed    = 1
	StoppedCrashed      = 2
	StoppedMigrated     = 3
	StoppedSaved        = 4
	StoppedFailed       = 5
	StoppedFromSnapshot = 6

	StartedBooted       = 0
	StartedMigrated     = 1
	StartedRestored     = 2
	StartedFromSnapshot = 3
	StartedWakeup       = 4

	SuspendedMigrated       = 1
	SuspendedPostcopy       = 7
	SuspendedPostcopyFailed = 8

	ResumedMigrated       = 1
	ResumedPostcopyFailed = 4
)

// DomState is a domain's state as libvirt reports it (virDomainState),
// and Absent for a domain libvirt does not know.
type DomState int

const (
	Absent      DomState = -1
	NoState     DomState = 0
	Running     DomState = 1
	Blocked     DomState = 2
	Paused      DomState = 3
	ShuttingOff DomState = 4 // VIR_DOMAIN_SHUTDOWN: being shut down
	ShutOff     DomState = 5
	CrashedDom  DomState = 6
	PMSusp      DomState = 7
)

// Reasons of a shut-off domain (virDomainShutoffReason), as an
// observation reports them: numbered differently from Stopped's details.
const (
	ShutoffUnknown   = 0
	ShutoffShutdown  = 1
	ShutoffDestroyed = 2
	ShutoffCrashed   = 3
	ShutoffMigrated  = 4
	ShutoffSaved     = 5
	ShutoffFailed    = 6
)

// Event is one input. Detail is for libvirt's events; State, Reason and
// MigratingOut for Observed (MigratingOut: libvirt runs an outgoing
// migration job). Host names the destination of a migration when known.
type Event struct {
	Type         Type
	Detail       int
	At           time.Time
	State        DomState
	Reason       int
	MigratingOut bool
	Host         string
}

// Phase is where the domain is, as far as protection goes.
type Phase int

const (
	// Unknown: nothing heard yet; protection goes on as without events.
	Unknown Phase = iota
	// Up: QEMU runs here (paused or not: a pause is livecut's business).
	Up
	// Down: shut off, destroyed, crashed, saved, undefined.
	Down
	// Migrating: libvirt migrates the domain to another host.
	Migrating
	// Away: the domain was migrated to another host.
	Away
)

func (p Phase) String() string {
	return [...]string{"unknown", "running", "shut-off", "migrating", "migrated"}[p]
}

// Action is what the sender does.
type Action int

const (
	// Protect: cut epochs as usual.
	Protect Action = iota
	// Hold: no cuts, and no errors, until the next decision.
	Hold
	// Resync: protect again; the domain runs in a new QEMU, so the monitor
	// reconnects and the next epoch compares every block (no bitmap of the
	// old QEMU survives), which livecut does when it finds the chain broken.
	Resync
	// Retire: the domain went to another host; cutting stops here without
	// an error, and would resume only if the domain starts here again.
	Retire
)

func (a Action) String() string {
	return [...]string{"protect", "hold", "resync", "retire"}[a]
}

// State is the domain's state for protection.
type State struct {
	Phase Phase
	// Since is when the phase began (the event's time).
	Since time.Time
	// Why says what brought the phase, in a few words ("destroyed").
	Why  string
	Host string // where it migrated, when known
	// Evidence is the last sign of a migration in progress.
	Evidence time.Time
	// NewQEMU: running again in a QEMU other than the one last cut.
	NewQEMU bool
}

// Holding reports whether protection waits in this state.
func (s State) Holding() bool {
	return s.Phase == Down || s.Phase == Migrating || s.Phase == Away
}

// Describe is the state as status shows it.
func (s State) Describe() string {
	at := s.Since.UTC().Format("15:04:05") + " UTC"
	switch s.Phase {
	case Up:
		if s.Why == "" {
			return "domain running"
		}
		if s.NewQEMU {
			return fmt.Sprintf("domain %s at %s; protection resumed with a full epoch (a new QEMU keeps no change tracking)", s.Why, at)
		}
		return fmt.Sprintf("domain %s at %s; protection resumed", s.Why, at)
	case Down:
		return fmt.Sprintf("domain %s at %s; waiting for it to start", s.Why, at)
	case Migrating:
		return fmt.Sprintf("domain migrating (outgoing) since %s; protection paused", at)
	case Away:
		host := s.Host
		if host == "" {
			host = "another host"
		}
		return fmt.Sprintf("domain migrated to %s at %s; protection stopped here (it resumes if the domain starts here again)", host, at)
	}
	return "domain state unknown (no lifecycle event yet)"
}

// ProbeEvery is how long a migration may be quiet (no iteration event)
// before the sender asks libvirt whether it still runs: one cancelled
// before its first pass ends, or failed without stopping the guest,
// sends no event at all.
const ProbeEvery = 10 * time.Second

// Decision is the outcome of one input.
type Decision struct {
	State  State
	Action Action
	// Changed: the phase (or its reason) changed; worth a log line and a
	// status update.
	Changed bool
}

// Machine tracks one domain. The zero value is a domain not heard of yet.
type Machine struct {
	st State
}

// State is the current state.
func (m *Machine) State() State { return m.st }

// Posture is what to do now, in the current state.
func (m *Machine) Posture() Action {
	switch m.st.Phase {
	case Down, Migrating:
		return Hold
	case Away:
		return Retire
	}
	return Protect
}

// ProbeDue reports whether the sender should observe the domain now: a
// migration has been quiet for ProbeEvery.
func (m *Machine) ProbeDue(now time.Time) bool {
	return m.st.Phase == Migrating && now.Sub(m.st.Evidence) >= ProbeEvery
}

// Step takes one input and decides.
func (m *Machine) Step(ev Event) Decision {
	old := m.st
	act := m.step(ev)
	return Decision{State: m.st, Action: act, Changed: m.st.Phase != old.Phase || m.st.Why != old.Why || m.st.Host != old.Host}
}

func (m *Machine) to(p Phase, at time.Time, why string) {
	m.st = State{Phase: p, Since: at, Why: why, Evidence: at}
}

func (m *Machine) step(ev Event) Action {
	switch ev.Type {
	case Started:
		// Whatever we thought, a new QEMU runs the domain now.
		m.to(Up, ev.At, startedWhy(ev.Detail))
		m.st.NewQEMU = true
		return Resync
	case Stopped:
		if ev.Detail == StoppedMigrated {
			m.to(Away, ev.At, "migrated")
			m.st.Host = ev.Host
			return Retire
		}
		m.to(Down, ev.At, stoppedWhy(ev.Detail))
		return Hold
	case Crashed:
		// The guest panicked; libvirt destroys, restarts or keeps it
		// paused (on_crash), and says so with further events.
		if m.st.Phase == Up || m.st.Phase == Unknown {
			m.to(Down, ev.At, "crashed (guest panic)")
		}
		return m.Posture()
	case Undefined:
		switch m.st.Phase {
		case Down:
			if m.st.Why != "" {
				m.st.Why += " and undefined"
			}
		case Away:
		default:
			m.to(Down, ev.At, "undefined")
		}
		return m.Posture()
	case Suspended:
		if ev.Detail == SuspendedMigrated || ev.Detail == SuspendedPostcopy {
			if m.st.Phase != Migrating {
				m.to(Migrating, ev.At, "migrating")
			}
			m.st.Evidence = ev.At
			return Hold
		}
		// Paused by the operator, an I/O error, or drsync's own cut: the
		// domain is still here, and livecut deals with a paused guest.
		return m.Posture()
	case Resumed:
		if m.st.Phase == Migrating && (ev.Detail == ResumedMigrated || ev.Detail == ResumedPostcopyFailed) {
			// libvirt resumes the source when the migration fails or is
			// cancelled: the same QEMU, its bitmaps intact.
			m.to(Up, ev.At, "stayed here (outgoing migration failed or cancelled)")
			return Protect
		}
		return m.Posture()
	case MigrationIteration:
		if m.st.Phase == Up || m.st.Phase == Unknown {
			m.to(Migrating, ev.At, "migrating")
		}
		if m.st.Phase == Migrating {
			m.st.Evidence = ev.At
		}
		return m.Posture()
	case JobCompleted:
		if m.st.Phase == Migrating {
			m.st.Evidence = ev.At
		}
		return m.Posture()
	case Observed:
		return m.observed(ev)
	}
	// Defined, Shutdown (QEMU still runs: a fake reboot resumes without a
	// further event), PMSuspended: nothing to do.
	return m.Posture()
}

func (m *Machine) observed(ev Event) Action {
	// An answer asked for before the last event arrived describes the
	// domain before it: a "running" read before a destroy must not undo
	// the destroy.
	if ev.At.Before(m.st.Since) {
		return m.Posture()
	}
	switch ev.State {
	case Absent:
		if m.st.Phase != Down && m.st.Phase != Away {
			m.to(Down, ev.At, "not defined")
		}
		return m.Posture()
	case ShutOff, CrashedDom:
		if ev.State == ShutOff && ev.Reason == ShutoffMigrated {
			if m.st.Phase != Away {
				m.to(Away, ev.At, "migrated")
				m.st.Host = ev.Host
			}
			return Retire
		}
		if m.st.Phase != Down {
			why := shutoffWhy(ev.Reason)
			if ev.State == CrashedDom {
				why = "crashed"
			}
			m.to(Down, ev.At, why)
		}
		return Hold
	}
	// QEMU runs.
	if ev.MigratingOut {
		if m.st.Phase != Migrating {
			m.to(Migrating, ev.At, "migrating")
		}
		m.st.Evidence = ev.At
		return Hold
	}
	switch m.st.Phase {
	case Migrating:
		m.to(Up, ev.At, "stayed here (outgoing migration failed or cancelled)")
		return Protect
	case Down, Away:
		// The Started event was missed (a lost libvirt connection).
		m.to(Up, ev.At, "found running again")
		m.st.NewQEMU = true
		return Resync
	case Unknown:
		m.to(Up, ev.At, "")
	}
	return Protect
}

func startedWhy(d int) string {
	switch d {
	case StartedMigrated:
		return "migrated in from another host"
	case StartedRestored:
		return "restored from a saved state"
	case StartedFromSnapshot:
		return "reverted to a snapshot"
	case StartedWakeup:
		return "woke up"
	}
	return "started"
}

func stoppedWhy(d int) string {
	switch d {
	case StoppedShutdown:
		return "shut down"
	case StoppedDestroyed:
		return "destroyed (forced off) by libvirt"
	case StoppedCrashed:
		return "crashed"
	case StoppedSaved:
		return "saved to a file by libvirt"
	case StoppedFailed:
		return "failed"
	case StoppedFromSnapshot:
		return "stopped for a snapshot revert"
	}
	return fmt.Sprintf("stopped (detail %d)", d)
}

func shutoffWhy(r int) string {
	switch r {
	case ShutoffShutdown:
		return "shut down"
	case ShutoffDestroyed:
		return "destroyed (forced off) by libvirt"
	case ShutoffCrashed:
		return "crashed"
	case ShutoffSaved:
		return "saved to a file by libvirt"
	case ShutoffFailed:
		return "failed"
	}
	return "found shut off"
}
