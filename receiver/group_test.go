package receiver_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
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
		out[p.Manifest.Epoch] = p.Manifest.Group
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
