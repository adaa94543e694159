package sender_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
)

// TestProgressFollowsAcknowledgements sends an epoch of several MiB to a
// receiver that acknowledges every 64 KiB, so that acknowledgements arrive
// while items are still being sent, and checks what Progress reports. Run
// with -race, it also shows that the send loop and the acknowledgement
// reader share the durable count safely.
func TestProgressFollowsAcknowledgements(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	disk := &testkit.MemTarget{Kind: vmspec.KindDisk, Name: "vda", BlockSize: 64 << 10, Data: make([]byte, 8<<20)}
	for i := range disk.Data {
		disk.Data[i] = byte(rng.Uint32())
	}
	src := &testkit.MemSource{Targets: []*testkit.MemTarget{disk}}
	rcv, err := receiver.New(receiver.Options{Root: "/replicas", FS: memfs.New(), AckBytes: 64 << 10, Now: time.Now,
		Authorize: func(receiver.Peer, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var reports []sender.Progress
	s, err := sender.New(sender.Options{VM: "web-1", Source: src, Dialer: testkit.PipeDialer(rcv, receiver.Peer{Fingerprint: "sha256:aa"}),
		Store: sender.Store{FS: memfs.New(), Dir: "/state"}, Now: time.Now,
		Progress: func(p sender.Progress) { mu.Lock(); reports = append(reports, p); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := s.RunEpoch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reports) != res.Items {
		t.Fatalf("%d progress reports for %d items", len(reports), res.Items)
	}
	var last sender.Progress
	for i, p := range reports {
		// While the epoch is still being planned, the totals are what is
		// planned so far.
		if p.Epoch != res.Epoch || !p.Planning && (p.Items != uint64(res.Items) || p.AllBytes != res.DataBytes) ||
			p.Items > uint64(res.Items) || p.AllBytes > res.DataBytes || p.Items < last.Items || p.AllBytes < last.AllBytes {
			t.Fatalf("report %d: %+v, result %+v", i, p, res)
		}
		if p.Durable < last.Durable || p.Durable > uint64(i+1) || p.SentBytes <= last.SentBytes || p.SentBytes > p.AllBytes {
			t.Fatalf("report %d: %+v after %+v", i, p, last)
		}
		last = p
	}
	// The connection buffers 1 MiB: the last reports come after several
	// acknowledgements were read.
	if last.Durable == 0 {
		t.Fatalf("no acknowledgement reported in %d reports of an 8 MiB epoch", len(reports))
	}
}
