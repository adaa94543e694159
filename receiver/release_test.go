package receiver_test

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
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
