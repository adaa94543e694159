package testkit

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/vmspec"
)

// MemTarget is an in-memory disk or RAM block.
type MemTarget struct {
	Kind      vmspec.TargetKind
	Name      string
	BlockSize int
	Data      []byte
}

// MemSource is a VM whose disks and RAM live in memory. Snapshot copies
// them, so the test may keep writing while an epoch is in flight.
type MemSource struct {
	mu          sync.Mutex
	Targets     []*MemTarget
	DeviceState []byte
	Now         func() time.Time
	Snapshots   int
	// Group, if set, tags snapshot n (1, 2, ...) as a group cut would;
	// it may return nil.
	Group func(n int) *vmspec.GroupCut
}

// Snapshot implements sender.Source.
func (m *MemSource) Snapshot(ctx context.Context) (*sender.Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Snapshots++
	s := &sender.Snapshot{Cut: time.Unix(int64(m.Snapshots), 0).UTC(), DeviceState: bytes.Clone(m.DeviceState), Close: func() error { return nil }}
	if m.Now != nil {
		s.Cut = m.Now()
	}
	if m.Group != nil {
		s.Group = m.Group(m.Snapshots)
	}
	for _, t := range m.Targets {
		s.Targets = append(s.Targets, sender.Target{Kind: t.Kind, Name: t.Name, Size: int64(len(t.Data)), BlockSize: t.BlockSize, Reader: bytes.NewReader(bytes.Clone(t.Data))})
	}
	return s, nil
}

// Mutate runs fn with the source locked.
func (m *MemSource) Mutate(fn func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn()
}

// RandomWrites writes n runs of random data (and some zero runs) at random
// places of t, like a guest would.
func RandomWrites(rng *rand.Rand, t *MemTarget, n, maxLen int) {
	for range n {
		l := 1 + rng.IntN(maxLen)
		if l > len(t.Data) {
			l = len(t.Data)
		}
		off := rng.IntN(len(t.Data) - l + 1)
		if rng.IntN(5) == 0 {
			clear(t.Data[off : off+l])
			continue
		}
		for i := off; i < off+l; i++ {
			t.Data[i] = byte(rng.Uint32())
		}
	}
}

// PipeDialer returns a Dialer whose every Dial hands one end of a pipe to
// rcv.Handle (in a goroutine) as peer.
func PipeDialer(rcv *receiver.Receiver, peer receiver.Peer) sender.Dialer {
	return sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		go rcv.Handle(context.Background(), peer, b)
		return a, nil
	})
}
