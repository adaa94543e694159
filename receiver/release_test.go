package receiver_test

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/wire"
)

// gate is the sender's end of a connection that goes silent, like a cut
// link, once limit bytes were written, until it is opened again.
type gate struct {
	net.Conn
	mu      sync.Mutex
	written int
	limit   int // 0: no limit
	open    chan struct{}
	blocked chan struct{} // closed when a write first waits
	once    sync.Once
}

func (g *gate) Write(p []byte) (int, error) {
	g.mu.Lock()
	limit, open := g.limit, g.open
	if limit > 0 && g.written+len(p) > limit {
		// What fits goes through; the rest waits for the gate to open.
		k := max(limit-g.written, 0)
		g.written += k
		g.mu.Unlock()
		n, err := g.Conn.Write(p[:k])
		if err != nil {
			return n, err
		}
		g.once.Do(func() { close(g.blocked) })
		<-open
		m, err := g.Write(p[k:])
		return n + m, err
	}
	g.written += len(p)
	g.mu.Unlock()
	return g.Conn.Write(p)
}

// gateDialer connects the sender to rcv through a gate.
func gateDialer(rcv *receiver.Receiver, g *gate) sender.Dialer {
	return sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		go rcv.Handle(context.Background(), alice, b)
		g.mu.Lock()
		g.Conn, g.written = a, 0
		g.mu.Unlock()
		return g, nil
	})
}

// A receiver staging an epoch whose sender goes silent lets go of the
// replica, so another process (a failover) takes it promptly, at its
// committed epoch with the staged part kept for resuming. When the sender
// comes back, the receiver takes the replica back and the epoch completes,
// waiting for the other holder if need be; unless the replica was taken
// over meanwhile, which the sender is then told.
func TestSilentSenderLetsGoOfReplica(t *testing.T) {
	for _, tc := range []struct {
		name     string
		takeOver bool
		holdFor  time.Duration // how long the other process keeps the replica after the sender is back
	}{
		{"sender comes back", false, 0},
		{"sender comes back while the replica is held", false, 300 * time.Millisecond},
		{"replica taken over meanwhile", true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(4, 2))
			rfs := memfs.New()
			rcv := newReceiver(t, rfs, func(o *receiver.Options) { o.ReleaseAfter = 50 * time.Millisecond })
			src := newSource(rng)
			g := &gate{open: make(chan struct{}), blocked: make(chan struct{})}
			s := newSender(t, src, gateDialer(rcv, g), memfs.New())
			defer s.Close()
			if _, err := s.RunEpoch(context.Background()); err != nil {
				t.Fatal(err)
			}
			mutate(rng, src, 1)
			want := src.SourceState()
			g.mu.Lock()
			g.limit = g.written + 200<<10 // part of the epoch
			g.mu.Unlock()
			done := make(chan error, 1)
			go func() {
				_, err := s.RunEpoch(context.Background())
				done <- err
			}()
			<-g.blocked
			silent := time.Now()
			// The receiver holds the replica from the epoch's first frame.
			for _, err := rfs.Stat("/replicas/web-1/journal"); err != nil; _, err = rfs.Stat("/replicas/web-1/journal") {
				time.Sleep(time.Millisecond)
			}
			o := replica.Options{FS: rfs, Dir: "/replicas/web-1", VM: "web-1", Now: now, AllowTakenOver: true, Holder: "a failover", LockWait: 5 * time.Second}
			r, err := replica.Open(o)
			if err != nil {
				t.Fatalf("open the replica while the sender is silent: %v", err)
			}
			took := time.Since(silent)
			pos := r.Position()
			t.Logf("replica taken %v after the sender went silent: committed %d, epoch %d staged with %d items durable", took.Round(time.Millisecond), pos.Committed, pos.StagedEpoch, pos.StagedDurable)
			if took > 2*time.Second {
				t.Errorf("took %v to get the replica of a silent sender", took)
			}
			if pos.Committed != 1 || pos.StagedEpoch != 2 || pos.StagedDurable == 0 {
				t.Errorf("replica position %+v, want epoch 1 committed and epoch 2 partly staged", pos)
			}
			if tc.takeOver {
				if err := r.MarkTakenOver(replica.TakeoverMark{Epoch: 1, At: now(), Reason: "test failover"}); err != nil {
					t.Fatal(err)
				}
			}
			if tc.holdFor > 0 {
				time.AfterFunc(tc.holdFor, func() { r.Close() })
			} else {
				r.Close()
			}
			g.mu.Lock()
			g.limit = 0
			close(g.open)
			g.mu.Unlock()
			err = <-done
			if tc.takeOver {
				var we *wire.Error
				if !errors.As(err, &we) || we.Code != wire.ErrTakenOver {
					t.Fatalf("sender after the takeover: %v, want a taken-over refusal", err)
				}
				got, _, rerr := testkit.ReplicaState(rfs, "/replicas/web-1")
				if rerr != nil || got != 1 {
					t.Fatalf("taken-over replica at epoch %d (%v), want 1", got, rerr)
				}
				return
			}
			if err != nil {
				t.Fatalf("epoch after the sender came back: %v", err)
			}
			checkReplica(t, rfs, want, 2)
		})
	}
}

// Between epochs the receiver lets go of the replica but keeps what it
// knows of it, so a connection reads each block table once, not once per
// epoch; a drill reads the replica between epochs meanwhile. When another
// writer changed the replica between epochs, the next epoch opens it
// again instead of staging over what that writer left.
func TestReplicaKeptBetweenEpochs(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 3))
	var mu sync.Mutex
	tableOpens := 0
	rfs := errorfs.Wrap(memfs.New(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpOpen && strings.HasSuffix(op.Path, ".bht") {
			mu.Lock()
			tableOpens++
			mu.Unlock()
		}
		return nil
	}))
	opens := func() int {
		mu.Lock()
		defer mu.Unlock()
		return tableOpens
	}
	rcv := newReceiver(t, rfs)
	src := newSource(rng)
	s := newSender(t, src, testkit.PipeDialer(rcv, alice), memfs.New())
	defer s.Close()
	if _, err := s.RunEpoch(context.Background()); err != nil {
		t.Fatal(err)
	}
	o := replica.Options{FS: rfs, Dir: "/replicas/web-1", VM: "web-1", Now: now, Holder: "a drill"}
	after1 := opens()
	for e := 2; e <= 4; e++ {
		mutate(rng, src, e)
		if _, err := s.RunEpoch(context.Background()); err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
	}
	if n := opens() - after1; n != 0 {
		t.Errorf("three epochs on one connection opened block tables %d times, want 0", n)
	}
	checkReplica(t, rfs, src.SourceState(), 4)
	// A drill reads it between epochs.
	r, err := replica.Open(o)
	if err != nil {
		t.Fatalf("open between epochs: %v", err)
	}
	r.Close()
	mutate(rng, src, 5)
	if _, err := s.RunEpoch(context.Background()); err != nil {
		t.Fatalf("epoch after a drill: %v", err)
	}
	checkReplica(t, rfs, src.SourceState(), 5)

	// Another writer leaves a staged epoch of its own between epochs.
	r, err = replica.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	m := r.Manifest()
	b := &wire.EpochBegin{Epoch: m.Epoch + 1, Cut: now()}
	for i, te := range m.Targets {
		b.Targets = append(b.Targets, wire.Target{ID: uint16(i), Kind: te.TargetKind(), Name: te.Name, Size: uint64(te.Size), BlockSize: uint32(te.BlockSize)})
	}
	b.Items = 1
	if err := r.Begin(b); err != nil {
		t.Fatal(err)
	}
	if err := r.Append(&wire.ZeroRun{Seq: 0, Target: 0, Offset: 0, Length: uint64(m.Targets[0].BlockSize)}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	before := opens()
	mutate(rng, src, 6)
	if _, err := s.RunEpoch(context.Background()); err != nil {
		t.Fatalf("epoch after another writer staged one: %v", err)
	}
	if opens() == before {
		t.Error("the receiver went on from what it knew after another writer staged an epoch")
	}
	checkReplica(t, rfs, src.SourceState(), 6)
}
