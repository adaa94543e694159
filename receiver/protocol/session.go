package protocol

import (
	"fmt"
	"slices"

	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Step is what the driver must do with a frame the session accepted.
type Step int

const (
	StepHello  Step = iota + 1 // authorize, open the replica, answer Welcome
	StepBegin                  // replica.Begin
	StepItem                   // replica.Append (and maybe sync + ack)
	StepCommit                 // replica.Commit, then ack committed
	StepTables                 // send the committed block tables
)

// Session is the receiver's per-connection protocol state: which frames may
// come next, the negotiated version, and when durable progress is
// acknowledged. It does no IO; the epoch's own rules live in the replica's
// staging logic.
type Session struct {
	ackBytes uint64 // sync and acknowledge after this many bytes
	state    int
	version  uint16
	vm       string
	epoch    uint64
	pending  uint64 // bytes appended since the last sync
}

const (
	sAwaitHello = iota
	sIdle
	sInEpoch
)

// New starts a connection's session that acknowledges durable progress
// every ackBytes appended.
func New(ackBytes uint64) *Session { return &Session{ackBytes: ackBytes} }

// Version is the protocol version negotiated at Hello.
func (s *Session) Version() uint16 { return s.version }

// Epoch is the epoch in flight (or the last one).
func (s *Session) Epoch() uint64 { return s.epoch }

// negotiate picks the highest version both sides speak.
func negotiate(h *wire.Hello) (uint16, error) {
	v := min(h.MaxVersion, wire.Version)
	if v < h.MinVersion || v < wire.MinVersion {
		return 0, &wire.Error{Code: wire.ErrVersion, Message: fmt.Sprintf("sender speaks protocol %d..%d, receiver %d..%d", h.MinVersion, h.MaxVersion, wire.MinVersion, wire.Version)}
	}
	return v, nil
}

// Next validates the order of f and says what to do with it. wantSync is
// set when enough has been appended that progress should be made durable
// and acknowledged.
func (s *Session) Next(f wire.Frame) (st Step, wantSync bool, err error) {
	bad := func(format string, a ...any) (Step, bool, error) {
		return 0, false, &wire.Error{Code: wire.ErrProtocol, Message: fmt.Sprintf(format, a...)}
	}
	switch s.state {
	case sAwaitHello:
		h, ok := f.(*wire.Hello)
		if !ok {
			return bad("expected Hello, got %s", f.Type())
		}
		v, err := negotiate(h)
		if err != nil {
			return 0, false, err
		}
		s.version, s.vm, s.state = v, h.VM, sIdle
		return StepHello, false, nil
	case sIdle:
		if _, ok := f.(*wire.TableRequest); ok {
			return StepTables, false, nil
		}
		b, ok := f.(*wire.EpochBegin)
		if !ok {
			return bad("expected EpochBegin, got %s", f.Type())
		}
		if b.Group != nil && s.version < wire.VersionGroups {
			return bad("epoch %d carries a group tag on a protocol %d connection (needs %d)", b.Epoch, s.version, wire.VersionGroups)
		}
		if s.version < wire.VersionBlobs && slices.ContainsFunc(b.Targets, func(t wire.Target) bool { return t.Kind == vmspec.KindBlob }) {
			return bad("epoch %d carries a blob target on a protocol %d connection (needs %d)", b.Epoch, s.version, wire.VersionBlobs)
		}
		if b.Open && s.version < wire.VersionOpen {
			return bad("epoch %d is open on a protocol %d connection (needs %d)", b.Epoch, s.version, wire.VersionOpen)
		}
		if err := b.ValidateGroupFor(s.vm); err != nil {
			return bad("epoch %d: %v", b.Epoch, err)
		}
		s.epoch, s.pending, s.state = b.Epoch, 0, sInEpoch
		return StepBegin, false, nil
	case sInEpoch:
		switch f := f.(type) {
		case wire.Item:
			s.pending += uint64(len(wire.DataOf(f))) + 64
			if s.pending >= s.ackBytes {
				s.pending = 0
				return StepItem, true, nil
			}
			return StepItem, false, nil
		case *wire.EpochCommit:
			s.state = sIdle
			return StepCommit, false, nil
		}
		return bad("%s inside epoch %d", f.Type(), s.epoch)
	}
	return bad("unexpected %s", f.Type())
}
