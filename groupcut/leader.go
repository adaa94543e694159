package groupcut

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/drsync/drsync/vmspec"
)

// ErrBusy marks a Start while a cut is still in progress, or before an
// aborted cut's retry time.
var ErrBusy = errors.New("groupcut: the group cannot start a cut now")

type leaderPhase int

const (
	lIdle leaderPhase = iota
	lPreparing
	lStopping
	lResuming
)

var leaderPhaseNames = [...]string{"idle", "preparing", "stopping", "resuming"}

// Leader decides one group's cuts: it tells every member when to prepare,
// when to stop and when to resume, and aborts a cut a member fails or
// does not answer in time. It does no IO: messages and time are passed in
// and the messages to send come out.
type Leader struct {
	o        Options
	phase    leaderPhase
	cut      uint64 // the cut in progress, or the last one
	deadline time.Time
	answered map[string]bool
	retryAt  time.Time
}

// Result ends a cut: committed (every member held its cut at one instant;
// each keeps it, tagged with Tag) or aborted (every member drops it).
type Result struct {
	Tag       vmspec.GroupCut
	Committed bool
	Reason    string
}

// Output is what a step of the leader decides.
type Output struct {
	Send []Msg   // to the member each names
	Done *Result // the cut ended
	Warn string  // something an operator should hear of; the cut's fate is decided
}

// NewLeader returns the leader of the group o describes (validated);
// lastCut is the highest cut number the group has used, so numbers keep
// increasing across restarts.
func NewLeader(o Options, lastCut uint64) *Leader {
	return &Leader{o: o, cut: lastCut}
}

// Cut is the number of the cut in progress or the last one.
func (l *Leader) Cut() uint64 { return l.cut }

// Busy reports whether a cut is in progress.
func (l *Leader) Busy() bool { return l.phase != lIdle }

// RetryAt is when an aborted cut may be tried again.
func (l *Leader) RetryAt() time.Time { return l.retryAt }

// Deadline is when Tick next matters (zero when idle).
func (l *Leader) Deadline() time.Time {
	if l.phase == lIdle {
		return time.Time{}
	}
	return l.deadline
}

// Start begins a new cut: every member prepares.
func (l *Leader) Start(now time.Time) (Output, error) {
	if l.phase != lIdle {
		return Output{}, fmt.Errorf("cut %d is %s: %w", l.cut, leaderPhaseNames[l.phase], ErrBusy)
	}
	if now.Before(l.retryAt) {
		return Output{}, fmt.Errorf("cut %d aborted; retry at %s: %w", l.cut, l.retryAt.Format(time.RFC3339Nano), ErrBusy)
	}
	l.cut++
	return l.enter(now, lPreparing, Prepare, l.o.PrepareTimeout), nil
}

func (l *Leader) enter(now time.Time, p leaderPhase, k Kind, timeout time.Duration) Output {
	l.phase, l.deadline, l.answered = p, now.Add(timeout), map[string]bool{}
	var out Output
	for _, m := range l.o.Members {
		out.Send = append(out.Send, Msg{Kind: k, Cut: l.cut, Member: m})
	}
	return out
}

// Receive takes a member's message.
func (l *Leader) Receive(now time.Time, m Msg) Output {
	if _, ok := slices.BinarySearch(l.o.Members, m.Member); !ok {
		return Output{Warn: fmt.Sprintf("message %s from %q, not a member of group %s", m, m.Member, l.o.Name)}
	}
	if m.Cut != l.cut || l.phase == lIdle {
		// A member that answers a cut already decided: one that is
		// holding its guest stopped must let it go now.
		if m.Kind == Held || m.Kind == Converged {
			return Output{Send: []Msg{{Kind: Abort, Cut: m.Cut, Member: m.Member}}}
		}
		return Output{}
	}
	want := map[leaderPhase]Kind{lPreparing: Converged, lStopping: Held, lResuming: Resumed}[l.phase]
	switch {
	case m.Kind == Failed || m.Kind == Aborted:
		if l.phase == lResuming {
			out := Output{Warn: fmt.Sprintf("%s dropped its part of committed cut %d: %s; the group point is incomplete", m.Member, l.cut, m.Reason)}
			if !l.answered[m.Member] {
				l.answered[m.Member] = true
				if len(l.answered) == len(l.o.Members) {
					l.phase = lIdle
				}
			}
			return out
		}
		return l.abort(now, fmt.Sprintf("%s %s: %s", m.Member, m.Kind, m.Reason))
	case m.Kind != want:
		return Output{}
	}
	l.answered[m.Member] = true
	if len(l.answered) < len(l.o.Members) {
		return Output{}
	}
	switch l.phase {
	case lPreparing:
		return l.enter(now, lStopping, Stop, l.o.StepTimeout)
	case lStopping:
		// Every member is stopped with its cut taken: this is the group's
		// instant. Each may resume; the cut is committed.
		out := l.enter(now, lResuming, Resume, l.o.StepTimeout)
		out.Done = &Result{Tag: l.tag(), Committed: true}
		return out
	default:
		l.phase = lIdle
		return Output{}
	}
}

// Tick acts on the passing of time: a member that did not answer in time
// aborts the cut.
func (l *Leader) Tick(now time.Time) Output {
	if l.phase == lIdle || now.Before(l.deadline) {
		return Output{}
	}
	missing := l.missing()
	if l.phase == lResuming {
		l.phase = lIdle
		return Output{Warn: fmt.Sprintf("cut %d: %s did not confirm resuming; its own watchdog resumes it", l.cut, strings.Join(missing, ", "))}
	}
	step := map[leaderPhase]Kind{lPreparing: Converged, lStopping: Held}[l.phase]
	timeout := l.o.StepTimeout
	if l.phase == lPreparing {
		timeout = l.o.PrepareTimeout
	}
	return l.abort(now, fmt.Sprintf("%s not %s within %s", strings.Join(missing, ", "), step, timeout))
}

func (l *Leader) missing() []string {
	var r []string
	for _, m := range l.o.Members {
		if !l.answered[m] {
			r = append(r, m)
		}
	}
	return r
}

// abort ends the cut without a group point: every member (also one that
// has not answered: it may come back) resumes and drops its cut.
func (l *Leader) abort(now time.Time, reason string) Output {
	out := Output{Done: &Result{Tag: l.tag(), Reason: reason}}
	for _, m := range l.o.Members {
		out.Send = append(out.Send, Msg{Kind: Abort, Cut: l.cut, Member: m})
	}
	l.phase, l.retryAt = lIdle, now.Add(l.o.RetryAfter)
	return out
}

func (l *Leader) tag() vmspec.GroupCut {
	return vmspec.GroupCut{Group: l.o.Name, Cut: l.cut, Members: slices.Clone(l.o.Members)}
}

// State describes the leader for logs and tests.
func (l *Leader) State() string {
	s := fmt.Sprintf("%s cut=%d", leaderPhaseNames[l.phase], l.cut)
	if l.phase != lIdle {
		s += fmt.Sprintf(" waiting=%s", strings.Join(l.missing(), ","))
	}
	return s
}
