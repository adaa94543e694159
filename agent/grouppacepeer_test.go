package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/epochctl"
	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
)

// acrossHosts is a group of a (on the leader) and b (on a follower) over
// QUIC with pinned mutual TLS; the leader's clock runs ahead of the real
// one by what its cuts slept, so planned waits cost no time.
type acrossHosts struct {
	lead *groupRun
	f    *groupFollow
	now  func() time.Time
}

func newAcrossHosts(t *testing.T, ctx context.Context, o groupcut.Options) *acrossHosts {
	t.Helper()
	lid, err := tlsid.WriteIdentity(t.TempDir(), "leader")
	if err != nil {
		t.Fatal(err)
	}
	fid, err := tlsid.WriteIdentity(t.TempDir(), "follower")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := transport.Listen("127.0.0.1:0", tlsid.ServerTLS(lid, tlsid.Trust{Fingerprints: []string{fid.Fingerprint}}), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ol, of := o, o
	ol.Local, ol.Listen, ol.Peers = []string{"a"}, ln.Addr().String(), []string{fid.Fingerprint}
	of.Local, of.Leader, of.Peers = []string{"b"}, ln.Addr().String(), []string{lid.Fingerprint}
	for _, o := range []*groupcut.Options{&ol, &of} {
		if err := o.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var offset time.Duration
	now := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return time.Now().Add(offset)
	}
	sleep := func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		offset += d
		mu.Unlock()
		return ctx.Err()
	}
	log := slog.New(slog.DiscardHandler)
	h := &acrossHosts{lead: newGroupRun(ol, now, sleep, log), now: now}
	fl := NewFollowers(ctx, ol, ln, log)
	fl.setEpochSink(h.lead.remoteCommitted)
	h.lead.remote = fl
	h.lead.members["a"] = func(context.Context) (GroupSteps, error) { return &fakeGuest{running: true}, nil }
	h.f = newGroupFollow(of, time.Now, SleepCtx, log)
	h.f.members["b"] = h.f.member("b", func(context.Context) (GroupSteps, error) { return &fakeGuest{running: true}, nil })
	go h.f.run(ctx, func(ctx context.Context) (io.ReadWriter, func(), error) {
		c, err := transport.Dial(ctx, of.Leader, tlsid.ClientTLS(fid, tlsid.Trust{Fingerprints: of.Peers}), transport.Options{})
		if err != nil {
			return nil, nil, err
		}
		s, err := c.OpenStream(ctx)
		if err != nil {
			return nil, nil, err
		}
		return s, func() { c.Close(0, "done") }, nil
	})
	for deadline := time.Now().Add(5 * time.Second); !fl.Has("b"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the follower never joined")
		}
	}
	return h
}

// cut has both members' senders ask for their snapshot; it returns the
// group cut they got.
func (h *acrossHosts) cut(t *testing.T, ctx context.Context) uint64 {
	t.Helper()
	type got struct {
		snap *sender.Snapshot
		err  error
	}
	ga, gb := make(chan got, 1), make(chan got, 1)
	go func() { s, err := h.lead.source("a").Snapshot(ctx); ga <- got{s, err} }()
	go func() { s, err := (followSource{h.f, "b"}).Snapshot(ctx); gb <- got{s, err} }()
	ra, rb := <-ga, <-gb
	if ra.err != nil || rb.err != nil {
		t.Fatalf("leader's sender: %v, follower's sender: %v", ra.err, rb.err)
	}
	defer ra.snap.Close()
	defer rb.snap.Close()
	if ra.snap.Group.Cut != rb.snap.Group.Cut {
		t.Fatalf("tags differ: %+v, %+v", ra.snap.Group, rb.snap.Group)
	}
	return ra.snap.Group.Cut
}

// TestGroupPacedOnFollowersEpochs: a group spanning hosts is paced on
// every member's bytes: the follower reports its member's committed
// epochs to the leader (group protocol 2), whose controller plans the
// next cut from the sum. The follower's member dirties 80 times what the
// leader's does; the interval the leader plans is the one the controller
// gives for both members' epochs, not for the leader's alone.
func TestGroupPacedOnFollowersEpochs(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o := groupcut.Options{Name: "g", Members: []string{"a", "b"}, RPO: time.Minute, PrepareTimeout: 3 * time.Second, StepTimeout: time.Second, RetryAfter: 50 * time.Millisecond}
	h := newAcrossHosts(t, ctx, o)
	// Dirty rates and the shared link, in bytes per second: the
	// follower's member dirties 36 times what the leader's does.
	const rateA, rateB, link = 500_000, 18_000_000, 20_000_000
	both, alone := mustGroup(t, o.RPO), mustGroup(t, o.RPO)
	var prevCut time.Time
	differed := false
	for round := 1; round <= 5; round++ {
		n := h.cut(t, ctx)
		cutAt := h.now()
		iv, covers := time.Duration(0), 10*time.Second // the first epoch: as if 10 s of dirtying
		if !prevCut.IsZero() {
			iv, covers = cutAt.Sub(prevCut), cutAt.Sub(prevCut)
		}
		type part struct {
			changed uint64
			send    time.Duration
		}
		mk := func(rate float64) part {
			b := uint64(rate * covers.Seconds())
			return part{b, time.Duration(float64(b) / link * float64(time.Second))}
		}
		a, b := mk(rateA), mk(rateB)
		obs := func(p part) epochctl.Observation {
			return epochctl.Observation{Cut: cutAt, Committed: cutAt.Add(p.send), Interval: iv, ChangedBytes: int64(p.changed), WireBytes: int64(p.changed), SendTime: p.send}
		}
		// The follower's member commits first, then the leader's.
		h.f.committed("b", &sender.Result{Cut: cutAt, DataBytes: b.changed, WireBytes: b.changed, SendTime: b.send}, cutAt.Add(b.send))
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			h.lead.mu.Lock()
			in := h.lead.parts[n]["b"]
			h.lead.mu.Unlock()
			if in.WireBytes > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("round %d: the follower's epoch of cut %d did not reach the leader in 3 s", round, n)
				break
			}
		}
		h.lead.committed("a", &sender.Result{Cut: cutAt, DataBytes: a.changed, WireBytes: a.changed, SendTime: a.send}, cutAt.Add(a.send))
		both.Observe([]epochctl.Observation{obs(a), obs(b)})
		alone.Observe([]epochctl.Observation{obs(a)})
		wantBoth, wantAlone := both.Decide(cutAt.Add(a.send)), alone.Decide(cutAt.Add(a.send))
		h.lead.mu.Lock()
		got, planned, reason := h.lead.interval, h.lead.planned, h.lead.reason
		h.lead.mu.Unlock()
		t.Logf("round %d (cut %d): leader plans %v (%s); the controller gives %v for both members, %v for the leader's alone",
			round, n, got, reason, wantBoth.Interval, wantAlone.Interval)
		if planned != n {
			t.Fatalf("round %d: the leader planned from cut %d, want %d", round, planned, n)
		}
		// The follower's commit instant is placed at its report's
		// arrival: allow that much, and no more, of a difference.
		if d := got - wantBoth.Interval; d < -time.Second || d > time.Second {
			t.Errorf("round %d: planned interval %v, want %v (both members' bytes); the leader's alone give %v", round, got, wantBoth.Interval, wantAlone.Interval)
		}
		if d := wantBoth.Interval - wantAlone.Interval; d < -2*time.Second || d > 2*time.Second {
			differed = true
		}
		prevCut = cutAt
	}
	if !differed {
		t.Fatal("the leader's member alone gives the same plans: the test shows nothing")
	}
}

func mustGroup(t *testing.T, rpo time.Duration) *epochctl.Group {
	t.Helper()
	g, err := epochctl.NewGroup(epochctl.Config{RPOTarget: rpo, Levels: []epochctl.Level{epochctl.LevelNone}})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestFollowerWithOldLeader: a leader speaking group protocol 1 sends no
// answer to the hello; the follower then takes part in its cuts as before
// and never sends it an epoch report, which it would refuse.
func TestFollowerWithOldLeader(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o := groupcut.Options{Name: "g", Members: []string{"a", "b"}, Local: []string{"b"}, Leader: "127.0.0.1:1", Peers: []string{"sha256:" + strings.Repeat("ab", 32)},
		RPO: time.Minute, PrepareTimeout: 2 * time.Second, StepTimeout: time.Second, RetryAfter: 50 * time.Millisecond}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	leader, follower := net.Pipe()
	defer leader.Close()
	epochs := make(chan MemberEpoch, 1)
	followed := make(chan error, 1)
	go func() {
		followed <- FollowGroup(ctx, o, follower, map[string]GroupMember{"b": func(context.Context) (GroupSteps, error) { return &fakeGuest{running: true}, nil }},
			func(string, *sender.Snapshot) {}, epochs, time.Now, nil)
		follower.Close()
	}()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(leader)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(3 * time.Second):
			t.Fatal("no line from the follower in 3 s")
			return ""
		}
	}
	hello := next()
	t.Logf("hello: %s", hello)
	// The old leader's reading: every line after the hello is a groupcut message.
	for _, step := range []struct{ send, want string }{{"prepare", "converged"}, {"stop", "held"}, {"resume", "resumed"}} {
		fmt.Fprintf(leader, `{"group":"g","kind":%q,"cut":5,"member":"b"}`+"\n", step.send)
		var l peerLine
		if err := json.Unmarshal([]byte(next()), &l); err != nil || l.Kind != step.want {
			t.Fatalf("answer to %s: %+v, %v; want %s", step.send, l, err, step.want)
		}
	}
	epochs <- MemberEpoch{Member: "b", Cut: 5, Observation: epochctl.Observation{ChangedBytes: 1, WireBytes: 1}}
	select {
	case l := <-lines:
		t.Fatalf("the follower sent a protocol 1 leader %s", l)
	case <-time.After(300 * time.Millisecond):
	}
	cancel()
	leader.Close()
	if err := <-followed; err != nil {
		t.Logf("follower ended: %v", err)
	}
}

// TestOldFollowerStillCuts: a follower speaking group protocol 1 (no
// version in its hello) takes part in the cuts; the leader plans from its
// own members without waiting for reports that never come.
func TestOldFollowerStillCuts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o := groupcut.Options{Name: "g", Members: []string{"a", "b"}, RPO: time.Minute, PrepareTimeout: 3 * time.Second, StepTimeout: time.Second, RetryAfter: 50 * time.Millisecond}
	helloVersion = 1
	defer func() { helloVersion = groupProtocol }()
	h := newAcrossHosts(t, ctx, o)
	for round := 1; round <= 2; round++ {
		n := h.cut(t, ctx)
		h.f.committed("b", &sender.Result{Cut: h.now(), DataBytes: 1e9, WireBytes: 1e9, SendTime: time.Second}, h.now())
		h.lead.committed("a", &sender.Result{Cut: h.now(), DataBytes: 1e6, WireBytes: 1e6, SendTime: time.Second}, h.now())
		h.lead.mu.Lock()
		planned, reports := h.lead.planned, h.lead.remote.(*Followers).Reports("b")
		h.lead.mu.Unlock()
		if planned != n || reports {
			t.Fatalf("round %d: planned from cut %d (want %d), follower reports: %v", round, planned, n, reports)
		}
		t.Logf("round %d: cut %d committed with a protocol 1 follower, planned from the leader's member", round, n)
	}
}
