package receiver_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
)

// swapDialer sends each new connection to the current receiver.
type swapDialer struct {
	mu  sync.Mutex
	rcv *receiver.Receiver
}

func (d *swapDialer) set(r *receiver.Receiver) { d.mu.Lock(); d.rcv = r; d.mu.Unlock() }
func (d *swapDialer) dialer() sender.Dialer {
	return sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) {
		d.mu.Lock()
		r := d.rcv
		d.mu.Unlock()
		return testkit.PipeDialer(r, alice).Dial(ctx)
	})
}

// TestCrashAtEveryStep fails the receiver's file system at every operation
// of an epoch in turn, then loses everything not synced (power loss), and
// checks that the replica recovers to exactly the previous or the new epoch
// and that replication then completes.
func TestCrashAtEveryStep(t *testing.T) {
	t.Run("no recovery points", func(t *testing.T) { crashAtEveryStep(t, 0) })
	// Keeping recovery points adds the undo capture to every apply; a
	// crash anywhere in it must leave no torn point behind.
	t.Run("two recovery points", func(t *testing.T) { crashAtEveryStep(t, 2) })
}

func crashAtEveryStep(t *testing.T, keep int) {
	// Count the file operations of one epoch.
	count := func() int {
		rng := rand.New(rand.NewPCG(7, 7))
		rfs := memfs.NewStrict()
		src := newSource(rng)
		d := &swapDialer{}
		d.set(newReceiver(t, rfs, keepPoints(keep)))
		s := newSender(t, src, d.dialer(), memfs.New())
		defer s.Close()
		for e := 1; e <= 2; e++ {
			if _, err := s.RunEpoch(context.Background()); err != nil {
				t.Fatal(err)
			}
			mutate(rng, src, e)
		}
		c := &errorfs.Counter{}
		s.Disconnect()
		d.set(newReceiver(t, errorfs.Wrap(rfs, c), keepPoints(keep)))
		if _, err := s.RunEpoch(context.Background()); err != nil {
			t.Fatal(err)
		}
		return c.Count()
	}
	n := count()
	t.Logf("an epoch takes %d file operations on the receiver", n)
	step := 1
	if testing.Short() {
		step = max(1, n/40)
	}
	outcomes := map[uint64]int{}
	for i := 0; i < n; i += step {
		t.Run(fmt.Sprint("op", i), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, 7))
			rfs := memfs.NewStrict()
			src := newSource(rng)
			d := &swapDialer{}
			d.set(newReceiver(t, rfs, keepPoints(keep)))
			s := newSender(t, src, d.dialer(), memfs.New())
			defer s.Close()
			var before map[string][]byte
			for e := 1; e <= 2; e++ {
				if _, err := s.RunEpoch(context.Background()); err != nil {
					t.Fatal(err)
				}
				mutate(rng, src, e)
			}
			_, before, _ = testkit.ReplicaState(rfs, "/replicas/web-1")
			after := src.SourceState()
			inj := errorfs.OnIndex(i, errorfs.ErrInjected)
			s.Disconnect()
			d.set(newReceiver(t, errorfs.Wrap(rfs, inj), keepPoints(keep)))
			_, err := s.RunEpoch(context.Background())
			if inj.Fired() && err == nil {
				// The failure hit after the commit was acknowledged
				// (e.g. removing the journal); recovery must still cope.
				t.Logf("op %d failed after commit", i)
			}
			crashed := rfs.Crash()
			rcv := newReceiver(t, crashed, keepPoints(keep))
			if err := rcv.RecoverAll(); err != nil {
				t.Fatalf("recover after failing op %d: %v", i, err)
			}
			epoch, state, err := testkit.ReplicaState(crashed, "/replicas/web-1")
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case epoch == 2 && testkit.DiffStates(before, state) == "":
			case epoch == 3 && testkit.DiffStates(after, state) == "":
			default:
				t.Fatalf("after failing op %d: replica at epoch %d matches neither epoch 2 (%s) nor 3 (%s)", i, epoch, testkit.DiffStates(before, state), testkit.DiffStates(after, state))
			}
			outcomes[epoch]++
			checkReplica(t, crashed, state, epoch)
			if keep > 0 && epoch == 3 {
				// Epoch 3 landed: epoch 2 must be restorable, exactly.
				to := fmt.Sprintf("/restore-%d", i)
				if _, err := replica.Materialize(crashed, "/replicas/web-1", 2, to); err != nil {
					t.Fatalf("after failing op %d: epoch 2 cannot be restored: %v", i, err)
				}
				if _, st2, err := testkit.ReplicaState(crashed, to); err != nil || testkit.DiffStates(before, st2) != "" {
					t.Fatalf("after failing op %d: restored epoch 2 differs: %v %s", i, err, testkit.DiffStates(before, st2))
				}
			}
			s.Disconnect()
			d.set(rcv)
			res, err := s.RunEpoch(context.Background())
			if err != nil {
				t.Fatalf("epoch after recovery: %v", err)
			}
			checkReplica(t, crashed, src.SourceState(), res.Epoch)
		})
	}
	t.Logf("recovered to epoch 2: %d times, to epoch 3: %d times", outcomes[2], outcomes[3])
	if outcomes[2]+outcomes[3] >= 10 && (outcomes[2] == 0 || outcomes[3] == 0) {
		t.Errorf("crash points never reached one of the outcomes: %v", outcomes)
	}
}

var _ vfs.FS = (*memfs.FS)(nil)
