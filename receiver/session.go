package receiver

import (
	"fmt"

	"github.com/drsync/drsync/wire"
)

// step is what the driver must do with a frame the session accepted.
type step int

const (
	stepHello  step = iota + 1 // authorize, open the replica, answer Welcome
	stepBegin                  // replica.Begin
	stepItem                   // replica.Append (and maybe sync + ack)
	stepCommit                 // replica.Commit, then ack committed
	stepTables                 // send the committed block tables
)

// session is the receiver's per-connection protocol state: which frames may
// come next, the negotiated version, and when durable progress is
// acknowledged. It does no IO; the epoch's own rules live in the replica's
// staging logic.
type session struct {
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

func newSession(ackBytes uint64) *session { return &session{ackBytes: ackBytes} }

// negotiate picks the highest version both sides speak.
func negotiate(h *wire.Hello) (uint16, error) {
	v := min(h.MaxVersion, wire.Version)
	if v < h.MinVersion || v < wire.MinVersion {
		return 0, &wire.Error{Code: wire.ErrVersion, Message: fmt.Sprintf("sender speaks protocol %d..%d, receiver %d..%d", h.MinVersion, h.MaxVersion, wire.MinVersion, wire.Version)}
	}
	return v, nil
}

// next validates the order of f and says what to do with it. wantSync is
// set when enough has been appended that progress should be made durable
// and acknowledged.
func (s *session) next(f wire.Frame) (st step, wantSync bool, err error) {
	bad := func(format string, a ...any) (step, bool, error) {
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
		return stepHello, false, nil
	case sIdle:
		if _, ok := f.(*wire.TableRequest); ok {
			return stepTables, false, nil
		}
		b, ok := f.(*wire.EpochBegin)
		if !ok {
			return bad("expected EpochBegin, got %s", f.Type())
		}
		s.epoch, s.pending, s.state = b.Epoch, 0, sInEpoch
		return stepBegin, false, nil
	case sInEpoch:
		switch f := f.(type) {
		case wire.Item:
			s.pending += uint64(len(wire.DataOf(f))) + 64
			if s.pending >= s.ackBytes {
				s.pending = 0
				return stepItem, true, nil
			}
			return stepItem, false, nil
		case *wire.EpochCommit:
			s.state = sIdle
			return stepCommit, false, nil
		}
		return bad("%s inside epoch %d", f.Type(), s.epoch)
	}
	return bad("unexpected %s", f.Type())
}
