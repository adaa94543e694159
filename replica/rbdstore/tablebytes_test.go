//go:build ceph && cgo

package rbdstore_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// tableBytes counts what a store writes to block table objects.
type tableBytes struct {
	rbd.Pool
	mu sync.Mutex
	n  int
}

func (p *tableBytes) WriteObject(oid string, data []byte) error {
	if strings.Contains(oid, ".bht.") {
		p.mu.Lock()
		p.n += len(data)
		p.mu.Unlock()
	}
	return p.Pool.WriteObject(oid, data)
}

func (p *tableBytes) take() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.n
	p.n = 0
	return n
}

// TestTableWritesFollowChanges: an epoch that changes a few pages of a
// large RAM block writes a patch of the entries changed since the whole
// table, not the whole table (which it writes again once the patch would
// hold an eighth of the entries), and a replica reopened after such
// epochs reads its table back and verifies.
func TestTableWritesFollowChanges(t *testing.T) {
	const pages = 1 << 14 // 64 MiB of RAM: a 128 KiB table
	pool := &tableBytes{Pool: sharedPool(t)}
	s := &rbdstore.Store{Pool: pool, Prefix: fmt.Sprintf("b%d-", backends.Add(1)), Now: time.Now}
	h, err := s.Open(t.Context(), "tb", replica.OpenOptions{Holder: "the test"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { h.Close() }()
	tab := blockhash.NewZero(pages*vmspec.PageSize, vmspec.PageSize)
	whole := tab.MarshalLen()
	rng := rand.New(rand.NewPCG(1, 2))
	var written []int
	for e := uint64(1); e <= 40; e++ {
		tab = tab.Clone()
		var items []wire.Item
		for range 64 { // 64 pages an epoch: an eighth of the table in 32 epochs at most
			pg := rng.IntN(pages)
			d := make([]byte, vmspec.PageSize)
			for i := range d {
				d[i] = byte(rng.Uint32())
			}
			tab.Hashes[pg] = blockhash.Hash(d)
			items = append(items, &wire.MemRun{Seq: uint64(len(items)), Target: 0, Page: uint64(pg), Data: d})
		}
		b := &wire.EpochBegin{Epoch: e, Cut: time.Unix(1_700_000_000+int64(e), 0).UTC(), Plan: e, Items: uint64(len(items)),
			Targets: []wire.Target{{ID: 0, Kind: vmspec.KindRAM, Name: "pc.ram", Size: pages * vmspec.PageSize, BlockSize: vmspec.PageSize}}}
		dig := wire.NewEpochDigest(e)
		for _, it := range items {
			d := wire.DataOf(it)
			b.Bytes += uint64(len(d))
			dig.Add(wire.Summarize(it, xxhash.Sum64(d)))
		}
		if err := h.Begin(b); err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			if err := h.Append(it); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := h.Sync(); err != nil {
			t.Fatal(err)
		}
		pool.take()
		c := &wire.EpochCommit{Epoch: e, Items: uint64(len(items)), Digest: dig.Sum(), States: []wire.TargetDigest{{Target: 0, Digest: tab.Digest()}}}
		if err := h.Commit(c); err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
		written = append(written, pool.take())
	}
	t.Logf("table bytes written by epoch (whole table %d): %v", whole, written)
	var sum, wholes int
	for e, n := range written {
		sum += n
		if n >= whole {
			wholes++
		} else if e == 0 {
			t.Errorf("epoch 1 wrote %d bytes of table, not the whole %d", n, whole)
		}
	}
	// 40 epochs of 64 scattered pages: a whole table in the first and
	// about every 32nd after, patches in between, growing by about 64
	// entries of 20 bytes (an entry and its run's header) an epoch. That
	// is some 7 whole tables' bytes, where writing the whole table each
	// epoch was 40.
	if wholes < 2 || wholes > 3 || sum > 10*whole {
		t.Errorf("%d whole tables and %d bytes in 40 epochs, want 2 or 3 and at most %d", wholes, sum, 10*whole)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if rep, err := s.Verify("tb"); err != nil || len(rep.Problems) > 0 || rep.Epoch != 40 {
		t.Fatalf("verify after patched epochs: %+v, %v", rep, err)
	}
	h, err = s.Open(t.Context(), "tb", replica.OpenOptions{Holder: "the test"})
	if err != nil {
		t.Fatal(err)
	}
	if got := h.Position(); got.Committed != 40 {
		t.Fatalf("reopened at %+v", got)
	}
}
