package protocol

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/internal/datadriven"
	"github.com/drsync/drsync/wire"
)

// Data-driven tests of the session: each file in testdata/ is a script of
// commands, each followed by "----" and its expected output up to a blank
// line. Lines starting with # are comments. Run with -rewrite to
// regenerate the expected output (then read the diff).
//
//	hello vm=NAME                        the driver sends Hello
//	recv Welcome [version=V] committed=N state=S [staged=E plan=P durable=D]
//	recv Ack epoch=E durable=D [committed]
//	recv Error code=CODE msg=TEXT...     CODE: protocol, unauthorized, version, digest, storage, busy, internal, taken-over
//	recv OTHER                           any other frame type the receiver might send (Hello, TableEnd, ...)
//	readerr msg=TEXT...                  reading from the receiver failed
//	abort msg=TEXT...                    the driver gave up (a write failed)
//	fits epoch=E base=S                  may an epoch planned against state S still be sent?
//	begin epoch=E plan=P items=N state=S [open prefix=X]
//	                                     the driver begins an epoch (state: the replica's after it;
//	                                     open: still planning, items planned so far, X the
//	                                     identity of its first staged-durable items)
//	planned items=N [complete] state=S   the planner's progress on an open epoch
//	send [n=K]                           the driver sends up to K items (all by default) as Next says
//	commit                               the driver sends EpochCommit, if Next says so
//	next                                 what Next says
//	after err=KIND                       what a failure leaves of the epoch: KIND digest, busy,
//	                                     source-changed, snapshot-lost, eof, unauthorized, taken-over

func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata/*.txt", func(t *testing.T, path string) {
		s := &scriptState{}
		datadriven.RunFile(t, path, func(line string) string { return s.run(t, line) })
	})
}

type scriptState struct {
	s *Session
}

// cut is the cut time of every scripted epoch.
var cut = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

var codes = map[string]wire.ErrorCode{
	"protocol": wire.ErrProtocol, "unauthorized": wire.ErrUnauthorized, "version": wire.ErrVersion, "digest": wire.ErrDigest,
	"storage": wire.ErrStorage, "busy": wire.ErrBusy, "internal": wire.ErrInternal, "taken-over": wire.ErrTakenOver,
}

func (st *scriptState) run(t *testing.T, line string) string {
	// msg= takes the rest of the line.
	line, msg, _ := strings.Cut(line, "msg=")
	fields := strings.Fields(line)
	a := datadriven.ParseArgs(fields[1:])
	num := func(k string) uint64 {
		v := a.Uint(k)
		if err := a.Err(); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		return v
	}
	flagCommitted := a.Has("committed")
	if st.s == nil && fields[0] != "hello" && fields[0] != "fits" && fields[0] != "after" {
		t.Fatalf("%s: no session (start with hello)", line)
	}
	switch fields[0] {
	case "hello":
		st.s = New(a.Str("vm"))
		h := st.s.Hello()
		return fmt.Sprintf("send Hello vm=%s versions=%d..%d", h.VM, h.MinVersion, h.MaxVersion)
	case "recv":
		var f wire.Frame
		switch fields[1] {
		case "Welcome":
			v := uint16(wire.Version)
			if a.Str("version") != "" {
				v = uint16(num("version"))
			}
			f = &wire.Welcome{Version: v, Position: wire.Position{Committed: num("committed"), StateID: num("state"),
				StagedEpoch: num("staged"), StagedPlan: num("plan"), StagedDurable: num("durable")}}
		case "Ack":
			f = &wire.Ack{Epoch: num("epoch"), Durable: num("durable"), Committed: flagCommitted}
		case "Error":
			c, ok := codes[a.Str("code")]
			if !ok {
				t.Fatalf("%s: unknown code %q", line, a.Str("code"))
			}
			f = &wire.Error{Code: c, Message: strings.TrimSpace(msg)}
		default:
			typ, ok := frameTypes[fields[1]]
			if !ok {
				t.Fatalf("%s: unknown frame %q", line, fields[1])
			}
			f = typ
		}
		if st.s.State() == AwaitWelcome {
			if err := st.s.Handshake(f); err != nil {
				return "refused: " + describe(err)
			}
			p := st.s.Position()
			return fmt.Sprintf("connected: committed=%d state=%d staged=%d plan=%d durable=%d", p.Committed, p.StateID, p.StagedEpoch, p.StagedPlan, p.StagedDurable)
		}
		st.s.Receive(f)
		return st.status()
	case "readerr":
		st.s.ReadFailed(errors.New(strings.TrimSpace(msg)))
		return st.status()
	case "abort":
		st.s.Abort(errors.New(strings.TrimSpace(msg)))
		return st.status()
	case "fits":
		if st.s == nil {
			t.Fatalf("%s: no session", line)
		}
		p := Plan{Epoch: num("epoch")}
		return fmt.Sprintf("%v", Fits(p, num("base"), st.s.Position()))
	case "begin":
		open := a.Has("open")
		start, err := st.s.Begin(Plan{Epoch: num("epoch"), ID: num("plan"), Items: num("items"), Cut: cut, StateID: num("state"), Open: open, Prefix: num("prefix")})
		if err != nil {
			return "error: " + describe(err)
		}
		return fmt.Sprintf("send EpochBegin epoch=%d items=%d start=%d open=%v\n%s", num("epoch"), num("items"), start, open, st.status())
	case "planned":
		st.s.Planned(num("items"), a.Has("complete"), num("state"))
		return st.status()
	case "send":
		n := uint64(1 << 62)
		if a.Str("n") != "" {
			n = num("n")
		}
		var first, last uint64
		var count uint64
		for count < n {
			act := st.s.Next()
			if act.Kind != SendItem {
				break
			}
			st.s.Sending(act.Item)
			if count == 0 {
				first = act.Item
			}
			last = act.Item
			count++
		}
		if count == 0 {
			return "nothing sent\n" + st.status()
		}
		return fmt.Sprintf("send items %d..%d\n%s", first, last, st.status())
	case "commit":
		if act := st.s.Next(); act.Kind != SendCommit {
			return "not yet: " + describeAction(act)
		}
		st.s.Committing()
		return "send EpochCommit\n" + st.status()
	case "next":
		return describeAction(st.s.Next())
	case "after":
		var err error
		switch a.Str("err") {
		case "source-changed":
			err = fmt.Errorf("epoch 3: disk vda block at 0: %w", ErrSourceChanged)
		case "snapshot-lost":
			err = fmt.Errorf("epoch 3: read: %w", ErrSnapshotLost)
		case "eof":
			err = fmt.Errorf("epoch 3: read acknowledgement: %w", io.EOF)
		default:
			c, ok := codes[a.Str("err")]
			if !ok {
				t.Fatalf("%s: unknown failure %q", line, a.Str("err"))
			}
			err = fmt.Errorf("epoch 3: %w", &wire.Error{Code: c, Message: "test"})
		}
		return AfterFailure(err).String()
	}
	t.Fatalf("unknown command %q", line)
	return ""
}

var frameTypes = map[string]wire.Frame{
	"Hello":        &wire.Hello{MinVersion: 1, MaxVersion: 1, VM: "vm"},
	"EpochBegin":   &wire.EpochBegin{Epoch: 1},
	"EpochCommit":  &wire.EpochCommit{Epoch: 1},
	"TableEnd":     &wire.TableEnd{},
	"TableRequest": &wire.TableRequest{},
	"ZeroRun":      &wire.ZeroRun{},
}

// status is a one-line summary of the session, and what it says to do.
func (st *scriptState) status() string {
	s := st.s
	p := s.Position()
	return fmt.Sprintf("state=%s sent=%d durable=%d position=%d/%d; %s", s.State(), s.Sent(), s.Durable(), p.Committed, p.StateID, describeAction(s.Next()))
}

func describeAction(a Action) string {
	switch a.Kind {
	case SendItem:
		return fmt.Sprintf("next: send item %d", a.Item)
	case SendCommit:
		return "next: send commit"
	case AwaitPlan:
		return "next: flush, wait for the planner"
	case Wait:
		return "next: wait for the commit"
	case Done:
		return "next: done"
	}
	return "stop: " + describe(a.Err)
}

// describe is err's text and the markers it carries.
func describe(err error) string {
	s := err.Error()
	var remote *wire.Error
	if errors.As(err, &remote) {
		s += fmt.Sprintf(" [remote %s, retryable=%v]", remote.Code, remote.Code.Retryable())
	}
	return s
}
