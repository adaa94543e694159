package sender_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// gatedSource is src whose last target cannot be read until gate is
// closed: the planner stops there, so anything the receiver gets before
// that was sent while the epoch was still being planned.
type gatedSource struct {
	src  *testkit.MemSource
	gate <-chan struct{}
}

func (g *gatedSource) Snapshot(ctx context.Context) (*sender.Snapshot, error) {
	snap, err := g.src.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	last := &snap.Targets[len(snap.Targets)-1]
	last.Reader = gatedReader{r: last.Reader, gate: g.gate}
	return snap, nil
}

type gatedReader struct {
	r    io.ReaderAt
	gate <-chan struct{}
}

func (g gatedReader) ReadAt(p []byte, off int64) (int, error) {
	select {
	case <-g.gate:
		return g.r.ReadAt(p, off)
	case <-time.After(10 * time.Second):
		return 0, errors.New("nothing went on the wire in 10 s: the sender waits for the whole plan")
	}
}

// countingConn closes wired once more than threshold bytes were written
// to it, and fails every write after failAfter bytes (0: never).
type countingConn struct {
	io.ReadWriteCloser
	n         *atomic.Int64
	threshold int64
	failAfter int64
	wired     func()
}

func (c *countingConn) Write(p []byte) (int, error) {
	if c.failAfter > 0 && c.n.Load() >= c.failAfter {
		c.ReadWriteCloser.Close()
		return 0, errors.New("link cut by the test")
	}
	n, err := c.ReadWriteCloser.Write(p)
	if c.n.Add(int64(n)) > c.threshold {
		c.wired()
	}
	return n, err
}

// overlapRig is a sender of a VM with a 4 MiB disk of single-block items
// (random and zero blocks alternating) and a gated 1 MiB second disk, and
// its receiver.
type overlapRig struct {
	src   *testkit.MemSource
	rfs   *memfs.FS
	rcv   *receiver.Receiver
	gate  chan struct{}
	wired func()
	state *memfs.FS // the senders' state directory
}

func newOverlapRig(t *testing.T) *overlapRig {
	rng := rand.New(rand.NewPCG(3, 4))
	bs := 64 << 10
	vda := &testkit.MemTarget{Kind: vmspec.KindDisk, Name: "vda", BlockSize: bs, Data: make([]byte, 4<<20)}
	for b := 0; b < len(vda.Data); b += 2 * bs {
		for i := b; i < b+bs; i++ {
			vda.Data[i] = byte(rng.Uint32())
		}
	}
	vdb := &testkit.MemTarget{Kind: vmspec.KindDisk, Name: "vdb", BlockSize: bs, Data: make([]byte, 1<<20)}
	for i := range vdb.Data {
		vdb.Data[i] = byte(rng.Uint32())
	}
	r := &overlapRig{src: &testkit.MemSource{Targets: []*testkit.MemTarget{vda, vdb}, DeviceState: []byte("device state")}, rfs: memfs.New(), gate: make(chan struct{}), state: memfs.New()}
	var once sync.Once
	r.wired = func() { once.Do(func() { close(r.gate) }) }
	rcv, err := receiver.New(receiver.Options{Root: "/replicas", FS: r.rfs, AckBytes: 64 << 10, Now: time.Now,
		Authorize: func(receiver.Peer, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	r.rcv = rcv
	return r
}

func (r *overlapRig) sender(t *testing.T, dial sender.Dialer) *sender.Sender {
	s, err := sender.New(sender.Options{VM: "web-1", Source: &gatedSource{src: r.src, gate: r.gate}, Dialer: dial,
		Store: sender.Store{FS: r.state, Dir: "/state"}, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (r *overlapRig) checkReplica(t *testing.T) {
	t.Helper()
	epoch, got, err := testkit.ReplicaState(r.rfs, "/replicas/web-1")
	if err != nil {
		t.Fatal(err)
	}
	if epoch != 1 {
		t.Fatalf("replica at epoch %d, want 1", epoch)
	}
	if d := testkit.DiffStates(r.src.SourceState(), got); d != "" {
		t.Fatalf("replica differs from the source: %s", d)
	}
}

// TestFirstItemsTravelWhilePlanning: the planner cannot finish until
// more than 1 MiB of the epoch has been written to the connection, so
// the epoch commits only if its first items go out while the rest is
// still being read and hashed (an open epoch, protocol 4).
func TestFirstItemsTravelWhilePlanning(t *testing.T) {
	r := newOverlapRig(t)
	pipe := testkit.PipeDialer(r.rcv, receiver.Peer{Fingerprint: "sha256:aa"})
	var n atomic.Int64
	s := r.sender(t, sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) {
		c, err := pipe.Dial(ctx)
		if err != nil {
			return nil, err
		}
		return &countingConn{ReadWriteCloser: c, n: &n, threshold: 1 << 20, wired: r.wired}, nil
	}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := s.RunEpoch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempts != 1 || res.StartSeq != 0 {
		t.Fatalf("result %+v: want one attempt from the start", res)
	}
	r.checkReplica(t)
}

// TestOpenEpochResumesAfterCutLink: the link fails while the epoch is
// still being planned; the next attempt finishes the plan's epoch from
// the receiver's durable items, not from the start, and the replica
// holds the source. With restart, the next attempt is a new sender's (a
// restarted process): it resumes too, since the staged items are its own
// plan's first ones.
func TestOpenEpochResumesAfterCutLink(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(fmt.Sprintf("restart=%v", restart), func(t *testing.T) { testOpenEpochResumes(t, restart) })
	}
}

func testOpenEpochResumes(t *testing.T, restart bool) {
	r := newOverlapRig(t)
	pipe := testkit.PipeDialer(r.rcv, receiver.Peer{Fingerprint: "sha256:aa"})
	var dials atomic.Int32
	dial := sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) {
		c, err := pipe.Dial(ctx)
		if err != nil {
			return nil, err
		}
		cc := &countingConn{ReadWriteCloser: c, n: new(atomic.Int64), threshold: 1 << 20, wired: r.wired}
		if dials.Add(1) == 1 {
			// The first connection breaks after 2 MiB, before the gate's
			// target is planned... or soon after: either way mid-epoch.
			cc.failAfter = 2 << 20
		}
		return cc, nil
	})
	s := r.sender(t, dial)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.RunEpoch(ctx); err == nil {
		t.Fatal("the first attempt succeeded over a link cut after 2 MiB of 3.5")
	}
	if restart {
		s.Close()
		s = r.sender(t, dial)
	}
	var res *sender.Result
	var err error
	for range 20 {
		// The receiver may still hold the replica for the broken connection.
		if res, err = s.RunEpoch(ctx); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Epoch != 1 || res.StartSeq == 0 || !restart && res.Attempts < 2 {
		t.Fatalf("result %+v: want epoch 1 resumed past its durable items", res)
	}
	r.checkReplica(t)
}

// TestOlderReceiverGetsWholePlan: a receiver speaking protocol 3 cannot
// take an open epoch, so the sender plans the epoch whole and announces
// its item count at EpochBegin, as before.
func TestOlderReceiverGetsWholePlan(t *testing.T) {
	r := newOverlapRig(t)
	close(r.gate)
	got := make(chan *wire.EpochBegin, 1)
	s := r.sender(t, sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			dec, enc := wire.NewDecoder(b, wire.DecoderOptions{}), wire.NewEncoder(b, wire.EncoderOptions{})
			if _, err := dec.Decode(); err != nil {
				return
			}
			if enc.Encode(&wire.Welcome{Version: wire.VersionBlobs}) != nil {
				return
			}
			f, err := dec.Decode()
			if eb, ok := f.(*wire.EpochBegin); ok && err == nil {
				got <- eb
			}
		}()
		return a, nil
	}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s.RunEpoch(ctx)
	select {
	case eb := <-got:
		// vda's 32 data blocks (its zero blocks are what a fresh replica
		// holds), vdb in one run, the device state.
		if eb.Open || eb.Items != 34 {
			t.Fatalf("EpochBegin on protocol 3: open=%v items=%d, want a closed epoch of 34 items", eb.Open, eb.Items)
		}
	default:
		t.Fatal("no EpochBegin reached the receiver")
	}
}
