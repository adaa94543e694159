package receiver_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// tagEvery tags snapshot n with cut 10n of group "shop", except the
// snapshots in untagged.
func tagEvery(untagged ...int) func(int) *vmspec.GroupCut {
	return func(n int) *vmspec.GroupCut {
		for _, u := range untagged {
			if n == u {
				return nil
			}
		}
		return &vmspec.GroupCut{Group: "shop", Cut: uint64(10 * n), Members: []string{"db", "web-1"}}
	}
}

// groupsOf lists the group tag of each restorable point, by epoch.
func groupsOf(t *testing.T, fsys vfs.FS) map[uint64]*vmspec.GroupCut {
	t.Helper()
	pts, err := replica.Points(fsys, "/replicas/web-1")
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]*vmspec.GroupCut{}
	for _, p := range pts {
		out[p.Manifest.Epoch] = p.Manifest.Tag()
	}
	return out
}

// TestGroupTagRecorded: the tag a snapshot carries travels through the
// real sender and receiver and is recorded with the committed epoch and
// with each retained recovery point; untagged epochs stay untagged.
func TestGroupTagRecorded(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	rfs := memfs.New()
	src := newSource(rng)
	src.Group = tagEvery(3)
	s := newSender(t, src, testkit.PipeDialer(newReceiver(t, rfs, keepPoints(3)), alice), memfs.New())
	defer s.Close()
	for e := 1; e <= 4; e++ {
		if _, err := s.RunEpoch(context.Background()); err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
		mutate(rng, src, e)
	}
	got := groupsOf(t, rfs)
	want := map[uint64]*vmspec.GroupCut{1: tagEvery()(1), 2: tagEvery()(2), 3: nil, 4: tagEvery()(4)}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("tags by epoch %v, want %v", got, want)
	}
}

// TestGroupTagSurvivesResume fails the receiver's file system at points
// across a tagged epoch, loses what was not synced, and lets the sender
// resume: whether the epoch was resumed from the journal or sent again,
// the committed epoch carries its tag.
func TestGroupTagSurvivesResume(t *testing.T) {
	const ops = 400 // beyond an epoch's file operations: the last runs see no failure
	resumed := 0
	for i := 5; i < ops; i += 15 {
		t.Run(fmt.Sprint("op", i), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, 7))
			rfs := memfs.NewStrict()
			src := newSource(rng)
			src.Group = tagEvery()
			d := &swapDialer{}
			d.set(newReceiver(t, rfs, keepPoints(3)))
			s := newSender(t, src, d.dialer(), memfs.New())
			defer s.Close()
			if _, err := s.RunEpoch(context.Background()); err != nil {
				t.Fatal(err)
			}
			mutate(rng, src, 1)
			s.Disconnect()
			d.set(newReceiver(t, errorfs.Wrap(rfs, errorfs.OnIndex(i, errorfs.ErrInjected)), keepPoints(3)))
			s.RunEpoch(context.Background()) // may fail: that is the point
			crashed := rfs.Crash()
			rcv := newReceiver(t, crashed, keepPoints(3))
			if err := rcv.RecoverAll(); err != nil {
				t.Fatalf("recover: %v", err)
			}
			s.Disconnect()
			d.set(rcv)
			for {
				res, err := s.RunEpoch(context.Background())
				if err != nil {
					t.Fatalf("epoch after recovery: %v", err)
				}
				if res.StartSeq > 0 {
					resumed++
				}
				if res.Epoch >= 2 {
					break
				}
			}
			got := groupsOf(t, crashed)
			m := got[2]
			if m == nil || m.Group != "shop" || m.Cut%10 != 0 || m.Cut < 20 {
				t.Fatalf("epoch 2 recorded with tag %+v", m)
			}
		})
	}
	if resumed == 0 {
		t.Errorf("no run resumed a staged epoch: the test does not cover the journal")
	}
	t.Logf("%d runs resumed a staged epoch", resumed)
}

// TestGroupPointRetained: with one recovery point kept, a member that
// commits later epochs of its own still keeps the epoch of the group's
// newest complete point (and all after it, which rolling back needs), so
// the group stays restorable at that point; once a newer group point is
// complete, the older one is pruned as usual.
func TestGroupPointRetained(t *testing.T) {
	// keep_points 0 (the default) keeps no point of a VM's own, yet a
	// member that committed a later cut still keeps the group point's.
	for _, keep := range []int{0, 1} {
		t.Run(fmt.Sprintf("keep_points=%d", keep), func(t *testing.T) { testGroupPointRetained(t, keep) })
	}
}

func testGroupPointRetained(t *testing.T, keep int) {
	rng := rand.New(rand.NewPCG(41, 42))
	rfs := memfs.New()
	rcv := newReceiver(t, rfs, keepPoints(keep))
	members := []string{"db", "web-1"}
	cut := 0 // the tag the next snapshot of each VM carries, 0 for none
	tag := func(int) *vmspec.GroupCut {
		if cut == 0 {
			return nil
		}
		return &vmspec.GroupCut{Group: "shop", Cut: uint64(cut), Members: members}
	}
	srcs := map[string]*testkit.MemSource{}
	senders := map[string]*sender.Sender{}
	for _, vm := range members {
		srcs[vm] = newSource(rng)
		srcs[vm].Group = tag
		s, err := sender.New(sender.Options{VM: vm, Source: srcs[vm], Dialer: testkit.PipeDialer(rcv, alice), Store: sender.Store{FS: memfs.New(), Dir: "/state/" + vm}, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		senders[vm] = s
	}
	states := map[string]map[uint64]map[string][]byte{"db": {}, "web-1": {}}
	run := func(vm string, c int) uint64 {
		t.Helper()
		cut = c
		states[vm][uint64(len(states[vm])+1)] = srcs[vm].SourceState()
		res, err := senders[vm].RunEpoch(context.Background())
		if err != nil {
			t.Fatalf("%s: %v", vm, err)
		}
		mutate(rng, srcs[vm], int(res.Epoch))
		t.Logf("%s: epoch %d, group cut %d", vm, res.Epoch, c)
		return res.Epoch
	}
	epochs := func(vm string) []uint64 {
		pts, err := replica.Points(rfs, "/replicas/"+vm)
		if err != nil {
			t.Fatal(err)
		}
		var eps []uint64
		for _, p := range pts {
			eps = append(eps, p.Manifest.Epoch)
		}
		return eps
	}
	run("db", 1)
	run("web-1", 1) // group point 1: db 1, web-1 1
	for range 3 {
		run("web-1", 0) // web-1's own epochs
	}
	run("web-1", 2) // web-1 has cut 2, db not yet
	run("web-1", 0)
	if got, want := epochs("web-1"), []uint64{1, 2, 3, 4, 5, 6}; !slices.Equal(got, want) {
		t.Fatalf("web-1 keeps %v, want %v (group point 1 needs epoch 1)", got, want)
	}
	to := "/restore-web-1"
	if _, err := replica.Materialize(rfs, "/replicas/web-1", 1, to); err != nil {
		t.Fatalf("group point 1 of web-1: %v", err)
	}
	if _, st, err := testkit.ReplicaState(rfs, to); err != nil || testkit.DiffStates(states["web-1"][1], st) != "" {
		t.Fatalf("web-1 restored at group point 1 differs: %v", err)
	}
	run("db", 2) // group point 2 complete: db 2, web-1 5
	run("web-1", 0)
	if got, want := epochs("web-1"), []uint64{5, 6, 7}; !slices.Equal(got, want) {
		t.Fatalf("web-1 keeps %v once group point 2 is complete, want %v", got, want)
	}
	if got, want := epochs("db"), []uint64{2 - uint64(keep), 2}[1-keep:]; !slices.Equal(got, want) {
		t.Fatalf("db keeps %v, want %v", got, want)
	}
}

// v1Dialer connects to rcv as a sender that speaks protocol 1 only would:
// it rewrites the Hello's version range, and passes every other frame on.
func v1Dialer(rcv *receiver.Receiver) sender.Dialer {
	return sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe() // a: the sender's end
		c, d := net.Pipe() // d: the receiver's end
		go rcv.Handle(context.Background(), alice, d)
		go func() {
			defer c.Close()
			dec, enc := wire.NewDecoder(b, wire.DecoderOptions{}), wire.NewEncoder(c, wire.EncoderOptions{})
			for {
				f, err := dec.Decode()
				if err != nil {
					return
				}
				if h, ok := f.(*wire.Hello); ok {
					h.MaxVersion = 1
				}
				if enc.Encode(f) != nil {
					return
				}
			}
		}()
		go func() { io.Copy(b, c); b.Close() }()
		return a, nil
	})
}

// TestGroupTagNeedsProtocol2: on a connection that negotiated protocol 1,
// a tagged epoch is refused by the sender with an error naming the cause,
// rather than sent without its tag; untagged epochs still go.
func TestGroupTagNeedsProtocol2(t *testing.T) {
	rng := rand.New(rand.NewPCG(51, 52))
	rfs := memfs.New()
	src := newSource(rng)
	tagged := false
	src.Group = func(n int) *vmspec.GroupCut {
		if !tagged {
			return nil
		}
		return tagEvery()(n)
	}
	s := newSender(t, src, v1Dialer(newReceiver(t, rfs)), memfs.New())
	defer s.Close()
	if _, err := s.RunEpoch(context.Background()); err != nil {
		t.Fatalf("untagged epoch over protocol 1: %v", err)
	}
	tagged = true
	mutate(rng, src, 1)
	_, err := s.RunEpoch(context.Background())
	if err == nil || !strings.Contains(err.Error(), "receiver speaks protocol 1, group tags need 2") {
		t.Fatalf("tagged epoch over protocol 1: %v", err)
	}
	if m := groupsOf(t, rfs); len(m) != 1 || m[1] != nil {
		t.Fatalf("replica points %v, want epoch 1 untagged only", m)
	}
}

// TestRestartedSenderRetagsStagedEpoch: a sender restarted while an epoch
// is staged cuts the same content again, but at a later group cut. It must
// not resume the staged epoch under the new tag (the receiver refuses
// that) but send it anew, and the replica records the new tag.
func TestRestartedSenderRetagsStagedEpoch(t *testing.T) {
	staged := 0
	for i := 20; i < 300; i += 20 {
		t.Run(fmt.Sprint("op", i), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(9, 9))
			rfs, sfs := memfs.NewStrict(), memfs.New()
			src := newSource(rng)
			cut := 0
			src.Group = func(int) *vmspec.GroupCut {
				if cut == 0 {
					return nil
				}
				return &vmspec.GroupCut{Group: "shop", Cut: uint64(cut), Members: []string{"db", "web-1"}}
			}
			d := &swapDialer{}
			d.set(newReceiver(t, rfs))
			s1 := newSender(t, src, d.dialer(), sfs)
			if _, err := s1.RunEpoch(context.Background()); err != nil {
				t.Fatal(err)
			}
			mutate(rng, src, 1)
			cut = 20
			s1.Disconnect()
			d.set(newReceiver(t, errorfs.Wrap(rfs, errorfs.OnIndex(i, errorfs.ErrInjected))))
			s1.RunEpoch(context.Background()) // fails part way, or not
			s1.Close()
			crashed := rfs.Crash()
			rcv := newReceiver(t, crashed)
			if err := rcv.RecoverAll(); err != nil {
				t.Fatalf("recover: %v", err)
			}
			if _, err := crashed.Stat("/replicas/web-1/journal"); err == nil {
				staged++
			}
			d.set(rcv)
			cut = 30 // the restarted sender's snapshot: same content, next group cut
			s2 := newSender(t, src, d.dialer(), sfs)
			defer s2.Close()
			res, err := s2.RunEpoch(context.Background())
			if err != nil {
				t.Fatalf("restarted sender: %v", err)
			}
			m, err := replica.FileStore{FS: crashed, Root: "/replicas"}.Manifest("web-1")
			if err != nil {
				t.Fatal(err)
			}
			if g := m.Tag(); res.Epoch == 2 && (g == nil || g.Cut != 30) {
				t.Fatalf("epoch 2 recorded with tag %+v, want cut 30", g)
			}
		})
	}
	if staged == 0 {
		t.Error("no run left an epoch staged: the test does not cover the restart")
	}
	t.Logf("%d runs left an epoch staged", staged)
}
