package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
)

// freezable is a stream a test can freeze, as a SIGSTOPped follower
// neither reads nor writes; what the leader sent meanwhile waits.
type freezable struct {
	io.ReadWriter
	mu   sync.Mutex
	cond *sync.Cond
	frz  bool
}

func newFreezable(s io.ReadWriter) *freezable {
	f := &freezable{ReadWriter: s}
	f.cond = sync.NewCond(&f.mu)
	return f
}

func (f *freezable) set(frozen bool) {
	f.mu.Lock()
	f.frz = frozen
	f.mu.Unlock()
	f.cond.Broadcast()
}

func (f *freezable) wait() {
	f.mu.Lock()
	for f.frz {
		f.cond.Wait()
	}
	f.mu.Unlock()
}

func (f *freezable) Read(p []byte) (int, error) {
	f.wait()
	n, err := f.ReadWriter.Read(p)
	f.wait() // a message read just before the freeze is handled after it
	return n, err
}

func (f *freezable) Write(p []byte) (int, error) { f.wait(); return f.ReadWriter.Write(p) }

// TestGroupAcrossHosts runs a group of two members, a on the leader and b
// on a follower, over QUIC with mutual TLS and pinned identities: a cut
// commits with one tag on both sides; a frozen follower (as if
// SIGSTOPped) makes the cut abort within the prepare timeout with a
// running; once the follower thaws, it drops the aborted cut and the next
// cut commits.
func TestGroupAcrossHosts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lid, err := tlsid.WriteIdentity(t.TempDir(), "leader")
	if err != nil {
		t.Fatal(err)
	}
	fid, err := tlsid.WriteIdentity(t.TempDir(), "follower")
	if err != nil {
		t.Fatal(err)
	}
	topts := transport.Options{IdleTimeout: 5 * time.Second, HandshakeTimeout: 5 * time.Second}
	ln, err := transport.Listen("127.0.0.1:0", tlsid.ServerTLS(lid, tlsid.Trust{Fingerprints: []string{fid.Fingerprint}}), topts)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	base := groupcut.Options{Name: "g", Members: []string{"a", "b"}, RPO: time.Minute,
		PrepareTimeout: time.Second, StepTimeout: 300 * time.Millisecond, RetryAfter: 50 * time.Millisecond}
	ol, of := base, base
	ol.Local, ol.Listen, ol.Peers = []string{"a"}, ln.Addr().String(), []string{fid.Fingerprint}
	of.Local, of.Leader, of.Peers = []string{"b"}, ln.Addr().String(), []string{lid.Fingerprint}
	for _, o := range []*groupcut.Options{&ol, &of} {
		if err := o.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	followers := NewFollowers(ctx, ol, ln, slog.New(slog.DiscardHandler))

	conn, err := transport.Dial(ctx, ln.Addr().String(), tlsid.ClientTLS(fid, tlsid.Trust{Fingerprints: []string{lid.Fingerprint}}), topts)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(0, "done")
	st, err := conn.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fs := newFreezable(st)
	a, b := &fakeGuest{running: true}, &fakeGuest{running: true}
	var mu sync.Mutex
	got := map[uint64]*sender.Snapshot{}
	fctx, fcancel := context.WithCancel(ctx)
	followed := make(chan error, 1)
	go func() {
		followed <- FollowGroup(fctx, of, fs, map[string]GroupMember{"b": func(context.Context) (GroupSteps, error) { return b, nil }},
			func(vm string, s *sender.Snapshot) { mu.Lock(); got[s.Group.Cut] = s; mu.Unlock() }, nil, time.Now, nil)
	}()
	for deadline := time.Now().Add(5 * time.Second); !followers.Has("b"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the follower never joined")
		}
	}
	l := groupcut.NewLeader(ol, 100)
	local := map[string]GroupMember{"a": func(context.Context) (GroupSteps, error) { return a, nil }}
	cut := func() (*GroupCutResult, time.Duration, error) {
		t0 := time.Now()
		res, err := LeadGroupCut(ctx, ol, l, local, followers, time.Now, nil)
		return res, time.Since(t0), err
	}
	waitSnap := func(n uint64) *sender.Snapshot {
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			mu.Lock()
			s := got[n]
			mu.Unlock()
			if s != nil {
				return s
			}
		}
		t.Fatalf("the follower kept no snapshot of cut %d", n)
		return nil
	}

	res, took, err := cut()
	if err != nil {
		t.Fatalf("first cut: %v", err)
	}
	if sb := waitSnap(res.Tag.Cut); sb.Group.Validate("b") != nil || res.Snapshots["a"].Group.Cut != sb.Group.Cut {
		t.Errorf("tags differ: leader %+v, follower %+v", res.Snapshots["a"].Group, sb.Group)
	}
	t.Logf("cut %d committed across hosts in %v", res.Tag.Cut, took.Round(time.Millisecond))

	fs.set(true)
	_, took, err = cut()
	if !errors.Is(err, ErrGroupCutAborted) {
		t.Fatalf("cut with a frozen follower: %v; want aborted", err)
	}
	t.Logf("frozen follower: %v after %v", err, took.Round(time.Millisecond))
	// Honest margin on a loaded machine: the prepare timeout plus 2 s.
	if took > ol.PrepareTimeout+2*time.Second {
		t.Errorf("the abort took %v (prepare timeout %v)", took, ol.PrepareTimeout)
	}
	a.mu.Lock()
	if !a.running || a.aborted == 0 {
		t.Errorf("the leader's member after the abort: running %v, aborted %d", a.running, a.aborted)
	}
	a.mu.Unlock()

	fs.set(false)
	time.Sleep(ol.RetryAfter)
	var ok bool
	for try := 0; try < 5 && !ok; try++ {
		res, took, err = cut()
		ok = err == nil
		if !ok {
			t.Logf("cut after the thaw, try %d: %v", try+1, err)
		}
	}
	if !ok {
		t.Fatalf("no cut commits after the follower thawed: %v", err)
	}
	waitSnap(res.Tag.Cut)
	t.Logf("cut %d committed after the thaw in %v", res.Tag.Cut, took.Round(time.Millisecond))
	b.mu.Lock()
	if !b.running {
		t.Errorf("the follower's guest is left stopped")
	}
	b.mu.Unlock()
	fcancel()
	if err := <-followed; err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("follower ended: %v", err)
	}
}

// TestGroupSendersAcrossHosts: the senders of two hosts each take their
// member's epoch from the same group cut: the leader's sender asks first,
// the follower's sender 200 ms later (its previous epoch still being
// sent), and the cut waits for it rather than leaving it out.
func TestGroupSendersAcrossHosts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lid, _ := tlsid.WriteIdentity(t.TempDir(), "leader")
	fid, _ := tlsid.WriteIdentity(t.TempDir(), "follower")
	ln, err := transport.Listen("127.0.0.1:0", tlsid.ServerTLS(lid, tlsid.Trust{Fingerprints: []string{fid.Fingerprint}}), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	base := groupcut.Options{Name: "g", Members: []string{"a", "b"}, RPO: time.Minute, PrepareTimeout: 3 * time.Second, StepTimeout: time.Second, RetryAfter: 50 * time.Millisecond}
	ol, of := base, base
	ol.Local, ol.Listen, ol.Peers = []string{"a"}, ln.Addr().String(), []string{fid.Fingerprint}
	of.Local, of.Leader, of.Peers = []string{"b"}, ln.Addr().String(), []string{lid.Fingerprint}
	for _, o := range []*groupcut.Options{&ol, &of} {
		if err := o.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.DiscardHandler)
	lead := newGroupRun(ol, time.Now, SleepCtx, log)
	lead.remote = NewFollowers(ctx, ol, ln, log)
	a, b := &fakeGuest{running: true}, &fakeGuest{running: true}
	lead.members["a"] = func(context.Context) (GroupSteps, error) { return a, nil }
	f := newGroupFollow(of, time.Now, SleepCtx, log)
	f.members["b"] = f.member("b", func(context.Context) (GroupSteps, error) { return b, nil })
	go f.run(ctx, func(ctx context.Context) (io.ReadWriter, func(), error) {
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
	for deadline := time.Now().Add(5 * time.Second); !lead.remote.Has("b"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the follower never joined")
		}
	}
	for round := 1; round <= 2; round++ {
		type got struct {
			snap *sender.Snapshot
			err  error
		}
		ga, gb := make(chan got, 1), make(chan got, 1)
		go func() { s, err := lead.source("a").Snapshot(ctx); ga <- got{s, err} }()
		go func() {
			time.Sleep(200 * time.Millisecond)
			s, err := followSource{f, "b"}.Snapshot(ctx)
			gb <- got{s, err}
		}()
		ra, rb := <-ga, <-gb
		if ra.err != nil || rb.err != nil {
			t.Fatalf("round %d: leader's sender %v, follower's sender %v", round, ra.err, rb.err)
		}
		if ra.snap.Group == nil || rb.snap.Group == nil || ra.snap.Group.Cut != rb.snap.Group.Cut || rb.snap.Group.Validate("b") != nil {
			t.Fatalf("round %d: tags %+v and %+v", round, ra.snap.Group, rb.snap.Group)
		}
		t.Logf("round %d: both senders got cut %d", round, ra.snap.Group.Cut)
	}
}
