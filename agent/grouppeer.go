package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/drsync/drsync/epochctl"
	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/vmspec"
)

// A group spanning hosts: the leader listens (QUIC, mutual TLS, the
// followers' identities pinned, as between sender and receiver); each
// follower dials it and opens one stream, on which both sides write one
// JSON object per line (at most maxPeerLine bytes):
//
//	follower → leader  {"group":"shop","hello":["web-1"]}           first line: its members
//	leader → follower  {"group":"shop","kind":"prepare","cut":7,"member":"web-1"}
//	follower → leader  {"group":"shop","kind":"held","cut":7,"member":"web-1"}
//	                   {"...","kind":"failed","reason":"..."}
//
// Version 2 adds the members' epochs, so that the leader paces the group
// on every member's bytes, not only its own members': the follower's
// hello says "version":2; a leader that speaks it answers with
// {"group":"shop","version":2} before anything else, and only then does
// the follower report each committed epoch of a group cut:
//
//	follower → leader  {"group":"shop","kind":"epoch","cut":7,"member":"web-1","epoch":{...}}
//
// A version 1 follower (no version in its hello) still takes part in the
// cuts; the leader warns that its members' bytes do not pace the group.
// A version 1 leader sends no answer, so a version 2 follower never
// reports to it.
//
// kind is a groupcut.Kind's name. The cut's tag (members sorted) is known
// to both sides from the configuration, so the messages carry only its
// number. A lost or late message is a silent member: the leader aborts
// at its timeouts, a follower resumes its guests at its own.

const maxPeerLine = 4 << 10

// groupProtocol is the version of the group protocol this side speaks.
const groupProtocol = 2

// helloVersion is the version a follower's hello states (tests make it
// an older follower's).
var helloVersion = groupProtocol

// epochKind is the kind of a version 2 follower's epoch report.
const epochKind = "epoch"

type peerLine struct {
	Group   string     `json:"group"`
	Version int        `json:"version,omitempty"` // hello and the leader's answer; absent: 1
	Hello   []string   `json:"hello,omitempty"`
	Epoch   *peerEpoch `json:"epoch,omitempty"`
	Kind    string     `json:"kind,omitempty"`
	Cut     uint64     `json:"cut,omitempty"`
	Member  string     `json:"member,omitempty"`
	Reason  string     `json:"reason,omitempty"`
}

// peerEpoch is a member's committed epoch of a group cut, as the leader's
// controller takes it (epochctl.Observation). Instants travel as the time
// from the cut to the commit: the hosts' clocks need not agree, so the
// leader places the commit at the report's arrival.
type peerEpoch struct {
	CutToCommitNS int64 `json:"cut_to_commit_ns"`
	IntervalNS    int64 `json:"interval_ns,omitempty"`
	ChangedBytes  int64 `json:"changed_bytes"`
	DedupedBytes  int64 `json:"deduped_bytes,omitempty"`
	WireBytes     int64 `json:"wire_bytes"`
	SendNS        int64 `json:"send_ns"`
	CPUNS         int64 `json:"cpu_ns,omitempty"`
	Level         int   `json:"level"`
}

func epochOf(o epochctl.Observation) *peerEpoch {
	return &peerEpoch{CutToCommitNS: int64(o.Committed.Sub(o.Cut)), IntervalNS: int64(o.Interval), ChangedBytes: o.ChangedBytes,
		DedupedBytes: o.DedupedBytes, WireBytes: o.WireBytes, SendNS: int64(o.SendTime), CPUNS: int64(o.CPUTime), Level: int(o.Level)}
}

// observation is e as received at now, on the leader's clock.
func (e *peerEpoch) observation(now time.Time) epochctl.Observation {
	return epochctl.Observation{Cut: now.Add(-time.Duration(max(e.CutToCommitNS, 0))), Committed: now, Interval: time.Duration(max(e.IntervalNS, 0)),
		ChangedBytes: e.ChangedBytes, DedupedBytes: e.DedupedBytes, WireBytes: e.WireBytes,
		SendTime: time.Duration(max(e.SendNS, 0)), CPUTime: time.Duration(max(e.CPUNS, 0)), Level: epochctl.Level(e.Level)}
}

func writeLine(w io.Writer, l peerLine) error {
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	if len(b) >= maxPeerLine {
		return fmt.Errorf("group message of %d bytes", len(b))
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func newLineScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, maxPeerLine), maxPeerLine)
	return sc
}

func (l peerLine) msg() (groupcut.Msg, error) {
	k, err := groupcut.ParseKind(l.Kind)
	if err != nil {
		return groupcut.Msg{}, err
	}
	return groupcut.Msg{Kind: k, Cut: l.Cut, Member: l.Member, Reason: l.Reason}, nil
}

// MemberEpoch is a member's committed epoch of group cut Cut, as a
// follower reports it to its leader.
type MemberEpoch struct {
	Member string
	Cut    uint64
	epochctl.Observation
}

// Followers is the leader's side of a group spanning hosts: it accepts
// the followers and carries the group cut's messages to their members
// (a Remote for LeadGroupCut).
type Followers struct {
	o    groupcut.Options
	log  *slog.Logger
	recv chan groupcut.Msg

	mu    sync.Mutex
	conns map[string]*followerConn // by member
	sink  epochSink
}

// epochSink is what a leader's followers hand their members' committed
// epochs to (the group's pacing).
type epochSink func(member string, cut uint64, e *peerEpoch)

// setEpochSink makes the followers' epoch reports go to sink.
func (f *Followers) setEpochSink(sink epochSink) {
	f.mu.Lock()
	f.sink = sink
	f.mu.Unlock()
}

// Reports reports whether member's follower is connected and reports its
// epochs (speaks version 2).
func (f *Followers) Reports(member string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc := f.conns[member]
	return fc != nil && fc.version >= 2
}

type followerConn struct {
	mu      sync.Mutex
	s       transport.Stream
	version int // the group protocol both sides speak
}

// NewFollowers serves the followers of group o on ln until ctx ends. The
// listener's TLS configuration pins the followers' identities.
func NewFollowers(ctx context.Context, o groupcut.Options, ln *transport.Listener, log *slog.Logger) *Followers {
	f := &Followers{o: o, log: log.With("group", o.Name), recv: make(chan groupcut.Msg, 64), conns: map[string]*followerConn{}}
	go f.accept(ctx, ln)
	return f
}

func (f *Followers) accept(ctx context.Context, ln *transport.Listener) {
	for {
		c, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		go func() {
			if err := f.serve(ctx, c); err != nil && ctx.Err() == nil {
				f.log.Warn("group follower", "peer", c.Peer().CommonName, "err", err)
			}
			c.Close(0, "follower gone")
		}()
	}
}

func (f *Followers) serve(ctx context.Context, c *transport.Conn) error {
	s, err := c.AcceptStream(ctx)
	if err != nil {
		return err
	}
	sc := newLineScanner(s)
	if !sc.Scan() {
		return fmt.Errorf("no hello: %w", sc.Err())
	}
	var hello peerLine
	if err := json.Unmarshal(sc.Bytes(), &hello); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if hello.Group != f.o.Name || len(hello.Hello) == 0 {
		return fmt.Errorf("follower %s says it follows group %q with %v; this leader leads %q", c.Peer().CommonName, hello.Group, hello.Hello, f.o.Name)
	}
	fc := &followerConn{s: s, version: min(max(hello.Version, 1), groupProtocol)}
	for _, m := range hello.Hello {
		if _, ok := slices.BinarySearch(f.o.Members, m); !ok || slices.Contains(f.o.Local, m) {
			return fmt.Errorf("follower %s claims VM %q, not one of the group's members on other hosts", c.Peer().CommonName, m)
		}
	}
	if fc.version >= 2 {
		// Before any cut's message: the follower reports its epochs only
		// once it has read this.
		s.SetWriteDeadline(time.Now().Add(f.o.StepTimeout))
		if err := writeLine(s, peerLine{Group: f.o.Name, Version: fc.version}); err != nil {
			return fmt.Errorf("answer to the hello of follower %s: %w", c.Peer().CommonName, err)
		}
	} else {
		f.log.Warn("group follower speaks group protocol 1: its members take part in the cuts, but their epochs do not pace the group; upgrade it",
			"peer", c.Peer().CommonName, "members", hello.Hello)
	}
	f.mu.Lock()
	for _, m := range hello.Hello {
		f.conns[m] = fc
	}
	f.mu.Unlock()
	f.log.Info("group follower joined", "peer", c.Peer().CommonName, "members", hello.Hello)
	defer func() {
		f.mu.Lock()
		for _, m := range hello.Hello {
			if f.conns[m] == fc {
				delete(f.conns, m)
			}
		}
		f.mu.Unlock()
	}()
	for sc.Scan() {
		var l peerLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("message: %w", err)
		}
		if l.Kind == epochKind {
			if l.Epoch == nil || fc.version < 2 || !slices.Contains(hello.Hello, l.Member) {
				return fmt.Errorf("epoch report %q from a follower of %v speaking group protocol %d", sc.Text(), hello.Hello, fc.version)
			}
			f.mu.Lock()
			sink := f.sink
			f.mu.Unlock()
			if sink != nil {
				sink(l.Member, l.Cut, l.Epoch)
			}
			continue
		}
		m, err := l.msg()
		if err != nil || !slices.Contains(hello.Hello, m.Member) {
			return fmt.Errorf("message %q from a follower of %v: %v", sc.Text(), hello.Hello, err)
		}
		select {
		case f.recv <- m:
		case <-ctx.Done():
			return nil
		}
	}
	return sc.Err()
}

// Has reports whether a follower hosting member is connected.
func (f *Followers) Has(member string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns[member] != nil
}

// Send writes m to the follower hosting its member; a write that does not
// finish quickly (a hung follower) is given up: the cut's timeouts decide.
func (f *Followers) Send(m groupcut.Msg) {
	f.mu.Lock()
	fc := f.conns[m.Member]
	f.mu.Unlock()
	if fc == nil {
		return
	}
	go func() {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		fc.s.SetWriteDeadline(time.Now().Add(f.o.StepTimeout))
		if err := writeLine(fc.s, peerLine{Group: f.o.Name, Kind: m.Kind.String(), Cut: m.Cut, Member: m.Member, Reason: m.Reason}); err != nil {
			f.log.Warn("group message to follower lost", "member", m.Member, "err", err)
		}
	}()
}

// Recv delivers the followers' members' messages.
func (f *Followers) Recv() <-chan groupcut.Msg { return f.recv }

// FollowGroup runs this host's members of group o as the leader on
// stream s directs, until ctx ends or the stream fails. Each member's
// committed cut goes to snapshot (which sends and closes it). A member
// held stopped resumes by itself when the leader falls silent, also once
// the stream is gone: FollowGroup returns only when no member holds a
// guest stopped. The members' committed epochs that arrive on epochs are
// reported to a leader that takes them (version 2), dropped otherwise.
func FollowGroup(ctx context.Context, o groupcut.Options, s io.ReadWriter, members map[string]GroupMember, snapshot func(vm string, snap *sender.Snapshot), epochs <-chan MemberEpoch, now func() time.Time, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := writeLine(s, peerLine{Group: o.Name, Version: helloVersion, Hello: o.Local}); err != nil {
		return fmt.Errorf("group %s: hello: %w", o.Name, err)
	}
	in := make(chan groupcut.Msg, 64)
	readErr := make(chan error, 1)
	leaderVersion := make(chan int, 1)
	go func() {
		sc := newLineScanner(s)
		first := true
		for sc.Scan() {
			var l peerLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				readErr <- fmt.Errorf("message from the leader: %w", err)
				return
			}
			if first && l.Version > 0 && l.Kind == "" && l.Group == o.Name {
				leaderVersion <- l.Version // it takes our epochs
				first = false
				continue
			}
			first = false
			m, err := l.msg()
			if err != nil || l.Group != o.Name {
				readErr <- fmt.Errorf("message %q from the leader: %v", sc.Text(), err)
				return
			}
			in <- m
		}
		err := sc.Err()
		if err == nil {
			err = io.EOF
		}
		readErr <- err
	}()
	reports := make(chan memberReport, 4*len(o.Local))
	machines := map[string]*groupcut.Member{}
	actions := map[string]chan groupcut.Action{}
	tags := map[uint64]*vmspec.GroupCut{}
	var tagMu sync.Mutex
	for _, name := range o.Local {
		start := members[name]
		if start == nil {
			return fmt.Errorf("group %s: member %s has no source here", o.Name, name)
		}
		machines[name] = groupcut.NewMember(o, name)
		actions[name] = make(chan groupcut.Action, 16)
		// The tag of a resumed cut: the group's members and the cut the
		// leader resumed.
		var cut uint64
		tag := func() *vmspec.GroupCut {
			tagMu.Lock()
			defer tagMu.Unlock()
			return tags[cut]
		}
		ch := make(chan groupcut.Action, 16)
		go func() {
			for a := range actions[name] {
				tagMu.Lock()
				cut = a.Cut
				if tags[a.Cut] == nil {
					tags[a.Cut] = &vmspec.GroupCut{Group: o.Name, Cut: a.Cut, Members: slices.Clone(o.Members)}
				}
				tagMu.Unlock()
				ch <- a
			}
			close(ch)
		}()
		go runMemberSteps(context.WithoutCancel(ctx), o, name, start, ch, reports, tag, log)
	}
	defer func() {
		for _, ch := range actions {
			close(ch)
		}
	}()
	busy := 0
	var out []groupcut.Msg
	do := func(name string, mo groupcut.MemberOutput) {
		for _, a := range mo.Do {
			busy++
			actions[name] <- a
		}
		out = append(out, mo.Send...)
	}
	var failed error
	reporting := false // the leader takes epoch reports
	done := ctx.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		for _, m := range out {
			if failed != nil {
				break
			}
			if err := writeLine(s, peerLine{Group: o.Name, Kind: m.Kind.String(), Cut: m.Cut, Member: m.Member, Reason: m.Reason}); err != nil {
				failed = fmt.Errorf("group %s: write to the leader: %w", o.Name, err)
			}
		}
		out = nil
		idle := busy == 0
		var next time.Time
		for _, mm := range machines {
			if d := mm.Deadline(); !d.IsZero() {
				idle = false
				if next.IsZero() || d.Before(next) {
					next = d
				}
			}
		}
		if (failed != nil || ctx.Err() != nil) && idle {
			if failed == nil {
				return nil
			}
			return failed
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(now()), 0) + time.Millisecond
		}
		timer.Reset(wait)
		select {
		case m := <-in:
			if mm := machines[m.Member]; mm != nil {
				do(m.Member, mm.Receive(now(), m))
			}
		case v := <-leaderVersion:
			reporting = v >= 2
		case e := <-epochs:
			if reporting && failed == nil && slices.Contains(o.Local, e.Member) {
				if err := writeLine(s, peerLine{Group: o.Name, Kind: epochKind, Cut: e.Cut, Member: e.Member, Epoch: epochOf(e.Observation)}); err != nil {
					failed = fmt.Errorf("group %s: write to the leader: %w", o.Name, err)
				}
			}
		case err := <-readErr:
			failed = fmt.Errorf("group %s: the leader's stream: %w", o.Name, err)
			readErr = nil
		case r := <-reports:
			busy--
			if r.snap != nil {
				snapshot(r.member, r.snap)
			}
			do(r.member, machines[r.member].Local(now(), r.msg))
		case <-timer.C:
			for name, mm := range machines {
				do(name, mm.Tick(now()))
			}
		case <-done:
			done = nil // from now on, only until no guest is held
		}
	}
}
