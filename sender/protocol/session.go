// Package protocol is the sender's side of the replication protocol as a
// state machine without IO: what to send next on a connection (Hello,
// EpochBegin, the epoch's items, EpochCommit), what each frame the
// receiver sends means (Welcome, acknowledgements of durable progress, the
// committed acknowledgement, Error), where an attempt resumes, and what a
// failed attempt leaves behind. Package sender drives it: it dials, reads
// the snapshot, encodes and decodes frames, and asks the session what to do.
//
// A Session serves one connection. It is not safe for concurrent use: the
// driver, which sends on one goroutine and reads acknowledgements on
// another, serializes the calls.
package protocol

import (
	"errors"
	"fmt"
	"time"

	"github.com/drsync/drsync/wire"
)

// ErrSourceChanged means a snapshot's content changed between planning and
// sending; the epoch is abandoned rather than sending a torn state.
var ErrSourceChanged = errors.New("source changed during the epoch")

// ErrSnapshotLost marks a snapshot that can no longer be read (the VM
// behind it exited, its export went away). The sender drops the epoch in
// flight and cuts a new one at its next attempt.
var ErrSnapshotLost = errors.New("snapshot lost")

// State is where a session stands.
type State int

const (
	Start        State = iota // nothing sent
	AwaitWelcome              // Hello sent
	Idle                      // connected, no epoch in progress
	Sending                   // EpochBegin sent: items, then the commit, to send
	AwaitCommit               // EpochCommit sent: waiting for its acknowledgement
	Failed                    // the connection is of no further use
)

func (s State) String() string {
	return [...]string{"start", "await-welcome", "idle", "sending", "await-commit", "failed"}[s]
}

// Plan identifies an epoch's plan to the session: what the receiver must
// see to resume it, and what the replica holds once it commits.
type Plan struct {
	Epoch   uint64
	ID      uint64 // wire.PlanID of the epoch's items (closed epochs only)
	Items   uint64 // open: the items planned so far
	Cut     time.Time
	StateID uint64 // the replica's state identity after the commit (open: known once planned)
	// Open is an epoch begun while it is still being planned (wire.VersionOpen):
	// Planned reports its items as the planner adds them, and the commit
	// waits until it is complete.
	Open bool
	// Prefix, for an open epoch, is the wire.OpenPlanID of its first
	// Position.StagedDurable items, if that many are planned (0 if not):
	// a staged open epoch is this plan's only if it matches.
	Prefix uint64
}

// ActionKind says what the driver does next.
type ActionKind int

const (
	SendItem   ActionKind = iota + 1 // send item Action.Item
	SendCommit                       // record the replica's next state, then send EpochCommit
	AwaitPlan                        // every planned item is sent: flush, and wait for the planner (Planned)
	Wait                             // everything is sent; wait for the committed acknowledgement
	Done                             // the receiver committed the epoch
	Stop                             // the attempt failed; Action.Err says why
)

// Action is the session's answer to "what now?".
type Action struct {
	Kind ActionKind
	Item uint64
	Err  error
}

// Session is the sender's protocol state on one connection.
type Session struct {
	vm      string
	state   State
	pos     wire.Position
	version uint16 // negotiated at Welcome

	// The epoch in progress.
	plan     Plan
	complete bool   // every item of plan is known
	next     uint64 // next item to send
	durable  uint64 // items the receiver reported durable in this attempt
	err      error  // why the attempt stopped
}

// New returns the session of a connection that replicates vm.
func New(vm string) *Session { return &Session{vm: vm} }

// Version is the protocol version the receiver chose at Welcome.
func (s *Session) Version() uint16 { return s.version }

// State reports where the session stands.
func (s *Session) State() State { return s.state }

// Position is the replica's durable position: as the Welcome announced it,
// then as the epochs committed on this connection moved it.
func (s *Session) Position() wire.Position { return s.pos }

// Hello is the first frame of a connection.
func (s *Session) Hello() *wire.Hello {
	s.state = AwaitWelcome
	return &wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.Version, VM: s.vm}
}

// Handshake takes the receiver's answer to Hello: a Welcome connects, an
// Error is its refusal (not authorized, replica taken over, no common
// version, ...), anything else is a broken receiver.
func (s *Session) Handshake(f wire.Frame) error {
	if s.state != AwaitWelcome {
		return s.fail(fmt.Errorf("handshake: %s in state %s: %w", f.Type(), s.state, wire.ErrMalformed))
	}
	switch f := f.(type) {
	case *wire.Welcome:
		if f.Version < wire.MinVersion || f.Version > wire.Version {
			return s.fail(fmt.Errorf("handshake: receiver chose protocol %d, this sender speaks %d..%d: %w", f.Version, wire.MinVersion, wire.Version, wire.ErrMalformed))
		}
		s.pos, s.version, s.state = f.Position, f.Version, Idle
		return nil
	case *wire.Error:
		return s.fail(fmt.Errorf("handshake: %w", f))
	}
	return s.fail(fmt.Errorf("handshake: receiver sent %s instead of Welcome: %w", f.Type(), wire.ErrMalformed))
}

// Fits reports whether an epoch planned as p against the replica state
// baseID can still be sent to a replica at pos: it must be the epoch after
// the replica's committed one, planned against the state the replica has.
// An epoch that does not fit is dropped and a new one cut.
func Fits(p Plan, baseID uint64, pos wire.Position) bool {
	return p.Epoch == pos.Committed+1 && baseID == pos.StateID
}

// ResumeFrom is the first item to send of plan p given the receiver's
// durable position: past the items already durable if the receiver stages
// exactly this plan (a closed epoch) or this plan's first items (an open
// one), otherwise from the start.
func ResumeFrom(p Plan, pos wire.Position) uint64 {
	if pos.StagedEpoch != p.Epoch || pos.StagedDurable > p.Items {
		return 0
	}
	if p.Open && p.Prefix != 0 && pos.StagedPlan == p.Prefix || !p.Open && pos.StagedPlan == p.ID {
		return pos.StagedDurable
	}
	return 0
}

// Begin starts sending p and returns the item to start from (EpochBegin's
// StartSeq).
func (s *Session) Begin(p Plan) (uint64, error) {
	if s.state != Idle {
		return 0, fmt.Errorf("epoch %d: begin in state %s", p.Epoch, s.state)
	}
	start := ResumeFrom(p, s.pos)
	s.plan, s.complete, s.next, s.durable, s.err, s.state = p, !p.Open, start, 0, nil, Sending
	return start, nil
}

// Planned reports an open epoch's planner progress: items planned so far
// and, once complete, the replica's state identity after the commit.
// Counts never go back; a closed epoch's are fixed at Begin.
func (s *Session) Planned(items uint64, complete bool, stateID uint64) {
	if s.state != Sending || s.complete || items < s.plan.Items {
		return
	}
	s.plan.Items, s.complete = items, complete
	if complete {
		s.plan.StateID = stateID
	}
}

// Next says what to do: send the next item, send the commit, wait for the
// commit's acknowledgement, or stop because the attempt failed (the
// receiver refused the epoch, or misbehaved).
func (s *Session) Next() Action {
	switch {
	case s.err != nil:
		return Action{Kind: Stop, Err: s.err}
	case s.state == Sending && s.next < s.plan.Items:
		return Action{Kind: SendItem, Item: s.next}
	case s.state == Sending && !s.complete:
		return Action{Kind: AwaitPlan}
	case s.state == Sending:
		return Action{Kind: SendCommit}
	case s.state == AwaitCommit:
		return Action{Kind: Wait}
	case s.state == Idle:
		return Action{Kind: Done}
	}
	return Action{Kind: Stop, Err: fmt.Errorf("epoch %d: nothing to do in state %s", s.plan.Epoch, s.state)}
}

// Sending records that the item Next named is handed to the connection.
// It is called before the item is written, so that an acknowledgement of
// it, which may be read before the write returns, is not taken for one of
// an item never sent.
func (s *Session) Sending(item uint64) {
	if s.state == Sending && item == s.next {
		s.next++
	}
}

// Committing records that EpochCommit is handed to the connection (before
// it is written, as Sending).
func (s *Session) Committing() {
	if s.state == Sending && s.complete && s.next == s.plan.Items {
		s.state = AwaitCommit
	}
}

// Sent is how many items of the epoch are handed to the connection
// (including the ones durable before this attempt).
func (s *Session) Sent() uint64 { return s.next }

// Durable is how many items of the epoch the receiver reported durable.
func (s *Session) Durable() uint64 { return s.durable }

// Finished reports whether the attempt is over: committed, or failed.
func (s *Session) Finished() bool {
	return s.err != nil || s.state == Idle || s.state == Failed
}

// Err is why the attempt failed, nil while it goes on or once committed.
func (s *Session) Err() error { return s.err }

// Receive takes a frame the receiver sent during an epoch and reports
// whether the attempt is over (see Finished and Err). Acknowledgements
// count items of this epoch: never more than were sent, never fewer than
// before; the committed one only after EpochCommit, for every item.
func (s *Session) Receive(f wire.Frame) bool {
	if s.Finished() {
		return true
	}
	epoch := s.plan.Epoch
	if s.state != Sending && s.state != AwaitCommit {
		s.fail(fmt.Errorf("epoch %d: receiver sent %s in state %s: %w", epoch, f.Type(), s.state, wire.ErrMalformed))
		return true
	}
	switch f := f.(type) {
	case *wire.Ack:
		switch {
		case f.Epoch != epoch:
			s.fail(fmt.Errorf("epoch %d: acknowledgement for epoch %d: %w", epoch, f.Epoch, wire.ErrMalformed))
		case f.Committed && s.state != AwaitCommit:
			s.fail(fmt.Errorf("epoch %d: receiver acknowledged a commit that was not sent: %w", epoch, wire.ErrMalformed))
		case f.Durable > s.next:
			s.fail(fmt.Errorf("epoch %d: receiver acknowledged %d items durable, %d were sent: %w", epoch, f.Durable, s.next, wire.ErrMalformed))
		case f.Durable < s.durable:
			s.fail(fmt.Errorf("epoch %d: receiver acknowledged %d items durable after %d: %w", epoch, f.Durable, s.durable, wire.ErrMalformed))
		case f.Committed && f.Durable != s.plan.Items:
			s.fail(fmt.Errorf("epoch %d: receiver committed %d items of %d: %w", epoch, f.Durable, s.plan.Items, wire.ErrMalformed))
		case f.Committed:
			s.durable = f.Durable
			s.pos = wire.Position{Committed: epoch, CommittedCut: s.plan.Cut, StateID: s.plan.StateID}
			s.state = Idle
		default:
			s.durable = f.Durable
		}
	case *wire.Error:
		s.fail(fmt.Errorf("epoch %d: %w", epoch, f))
	default:
		s.fail(fmt.Errorf("epoch %d: receiver sent %s: %w", epoch, f.Type(), wire.ErrMalformed))
	}
	return s.Finished()
}

// ReadFailed records that reading from the receiver failed mid-epoch.
func (s *Session) ReadFailed(err error) {
	if !s.Finished() {
		s.fail(fmt.Errorf("epoch %d: read acknowledgement: %w", s.plan.Epoch, err))
	}
}

// Abort records that the driver gave up on the attempt (a write failed,
// the source could not be read, it was stopped).
func (s *Session) Abort(err error) {
	if !s.Finished() {
		s.fail(err)
	}
}

func (s *Session) fail(err error) error {
	s.err, s.state = err, Failed
	return err
}

// Disposition is what a failed attempt leaves of the epoch in flight.
type Disposition int

const (
	// Resume keeps the epoch: the next attempt reconnects and continues
	// from the receiver's durable item count, if the receiver still
	// stages this plan (ResumeFrom).
	Resume Disposition = iota
	// Recut drops it: it cannot be finished as planned (the receiver found
	// its digest wrong, or the snapshot changed or vanished), so the next
	// attempt cuts a new epoch.
	Recut
)

func (d Disposition) String() string { return [...]string{"resume", "recut"}[d] }

// AfterFailure decides what a failed attempt leaves of its epoch. Whether
// to try again at all, and when, is the caller's policy (a refusal such as
// ErrUnauthorized or ErrTakenOver fails the same way every time; see
// wire.ErrorCode.Retryable).
func AfterFailure(err error) Disposition {
	var remote *wire.Error
	if errors.As(err, &remote) && remote.Code == wire.ErrDigest || errors.Is(err, ErrSourceChanged) || errors.Is(err, ErrSnapshotLost) {
		return Recut
	}
	return Resume
}
