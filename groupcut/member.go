package groupcut

import (
	"fmt"
	"time"
)

type memberState int

const (
	mIdle      memberState = iota
	mPreparing             // local Prepare step running
	mConverged             // capture converged, guest running, waiting for Stop
	mStopping              // local Stop step running (stop, then cut)
	mHeld                  // stopped with the cut taken, waiting for Resume
	mResuming              // local Resume step running
	mAborting              // local Abort step running
)

var memberStateNames = [...]string{"idle", "preparing", "converged", "stopping", "held", "resuming", "aborting"}

// Action is a step a member runs on its own VM. A member's actions run
// one after the other, in order; each reports back with Local.
type Action struct {
	Kind Kind // Prepare, Stop, Resume or Abort
	Cut  uint64
}

func (a Action) String() string { return fmt.Sprintf("%s cut=%d", a.Kind, a.Cut) }

// MemberOutput is what a step of a member decides.
type MemberOutput struct {
	Do   []Action
	Send []Msg // to the leader
}

// Member is one VM's side of its group's cuts. Besides obeying the
// leader, it bounds how long its guest waits on the leader: a guest
// stopped for a cut resumes by itself (dropping the cut) when the leader
// falls silent, so a hung or dead leader never leaves it paused.
type Member struct {
	name     string
	o        Options
	st       memberState
	cut      uint64
	last     uint64 // highest cut seen: older ones are stale
	deadline time.Time
	reason   string // why this member aborts on its own
}

// NewMember returns the member name of the group o describes.
func NewMember(o Options, name string) *Member {
	return &Member{name: name, o: o}
}

// HoldTimeout bounds how long a member's guest stays stopped waiting for
// the leader: the leader's own wait for the others, plus a round trip.
func (o *Options) HoldTimeout() time.Duration { return 2 * o.StepTimeout }

// Deadline is when Tick next matters (zero if never).
func (m *Member) Deadline() time.Time {
	switch m.st {
	case mPreparing, mConverged, mHeld:
		return m.deadline
	}
	return time.Time{}
}

// Receive takes a message from the leader.
func (m *Member) Receive(now time.Time, msg Msg) MemberOutput {
	switch msg.Kind {
	case Prepare:
		if msg.Cut <= m.last {
			return MemberOutput{} // stale or repeated
		}
		var out MemberOutput
		if m.st != mIdle && m.st != mAborting {
			// The leader moved on: whatever this member still holds goes.
			out.Do = append(out.Do, Action{Abort, m.cut})
		}
		m.st, m.cut, m.last = mPreparing, msg.Cut, msg.Cut
		m.deadline = now.Add(m.o.PrepareTimeout + m.o.StepTimeout)
		out.Do = append(out.Do, Action{Prepare, msg.Cut})
		return out
	case Stop:
		if msg.Cut != m.cut || m.st != mConverged {
			return m.refuse(msg)
		}
		m.st = mStopping
		return MemberOutput{Do: []Action{{Stop, m.cut}}}
	case Resume:
		if msg.Cut != m.cut || m.st != mHeld {
			return m.refuse(msg)
		}
		m.st = mResuming
		return MemberOutput{Do: []Action{{Resume, m.cut}}}
	case Abort:
		if msg.Cut != m.cut || m.st == mIdle || m.st == mAborting || m.st == mResuming {
			return MemberOutput{}
		}
		m.st, m.reason = mAborting, "aborted by the leader"
		return MemberOutput{Do: []Action{{Abort, m.cut}}}
	}
	return MemberOutput{}
}

// refuse answers a Stop or Resume the member cannot obey: one for the cut
// in progress is a protocol error that aborts it; one for an older cut
// (this member dropped it already) is answered so the leader knows.
func (m *Member) refuse(msg Msg) MemberOutput {
	if msg.Cut < m.cut || (msg.Cut == m.cut && m.st == mIdle) {
		return MemberOutput{Send: []Msg{{Kind: Aborted, Cut: msg.Cut, Member: m.name, Reason: "dropped already"}}}
	}
	if msg.Cut > m.cut {
		return MemberOutput{} // never prepared: nothing of it here
	}
	if m.st == mAborting {
		return MemberOutput{}
	}
	reason := fmt.Sprintf("%s while %s", msg.Kind, memberStateNames[m.st])
	m.st = mAborting
	return MemberOutput{
		Do:   []Action{{Abort, m.cut}},
		Send: []Msg{{Kind: Failed, Cut: m.cut, Member: m.name, Reason: reason}},
	}
}

// Local takes the report of the member's own step (Converged after
// Prepare, Held after Stop, Resumed, Aborted, or Failed for any).
func (m *Member) Local(now time.Time, r Msg) MemberOutput {
	if r.Cut != m.cut {
		return MemberOutput{}
	}
	r.Member = m.name
	switch {
	case r.Kind == Failed:
		if m.st == mAborting || m.st == mIdle {
			return MemberOutput{}
		}
		m.st = mAborting
		return MemberOutput{Do: []Action{{Abort, m.cut}}, Send: []Msg{r}}
	case r.Kind == Converged && m.st == mPreparing:
		m.st = mConverged
		m.deadline = now.Add(m.o.PrepareTimeout + m.o.StepTimeout)
	case r.Kind == Held && m.st == mStopping:
		m.st = mHeld
		m.deadline = now.Add(m.o.HoldTimeout())
	case r.Kind == Resumed && m.st == mResuming, r.Kind == Aborted && m.st == mAborting:
		m.st = mIdle
		if r.Kind == Aborted && r.Reason == "" {
			r.Reason, m.reason = m.reason, ""
		}
	default:
		return MemberOutput{} // a step of a cut this member dropped meanwhile
	}
	return MemberOutput{Send: []Msg{r}}
}

// Tick acts on the passing of time: a member that waited too long on the
// leader drops its cut and lets its guest run.
func (m *Member) Tick(now time.Time) MemberOutput {
	d := m.Deadline()
	if d.IsZero() || now.Before(d) {
		return MemberOutput{}
	}
	m.reason = fmt.Sprintf("no word from the leader while %s", memberStateNames[m.st])
	m.st = mAborting
	// The leader hears of it once the guest runs again (Local Aborted).
	return MemberOutput{Do: []Action{{Abort, m.cut}}}
}

// State describes the member for logs and tests.
func (m *Member) State() string {
	return fmt.Sprintf("%s cut=%d", memberStateNames[m.st], m.cut)
}
