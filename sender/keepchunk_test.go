package sender

import (
	"bytes"
	"context"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/vmspec"
)

// TestKeptChunksPlanAsBlockByBlock: a RAM target whose source marks whole
// chunks unchanged plans the same with keepChunk as block by block, over
// three epochs: the same items, tables and counters, and the RAM index fed
// alike (epoch 3 copies a page of a chunk kept in epoch 2, which only an
// index that learned it there turns into a reference). Chunks kept are
// those the replica holds as the previous cut had them; a replica behind
// the cut (baseFresh) keeps none.
func TestKeptChunksPlanAsBlockByBlock(t *testing.T) {
	const ps = vmspec.PageSize
	const size = 3*planChunk + 8*ps // three whole chunks and a short one
	rng := rand.New(rand.NewPCG(5, 6))
	v1 := make([]byte, size)
	for p := 0; p < size/ps; p++ {
		pg := v1[p*ps : (p+1)*ps]
		switch rng.IntN(4) {
		case 0: // zero
		case 1: // a copy of an earlier page: a reference within RAM
			if p > 0 {
				q := rng.IntN(p)
				copy(pg, v1[q*ps:(q+1)*ps])
			}
		default:
			for j := range pg {
				pg[j] = byte(rng.Uint32())
			}
		}
	}
	// Epoch 2 changes pages in chunks 1 and 3; 0 and 2 stay as they were.
	v2 := bytes.Clone(v1)
	changed := []int64{planChunk/ps + 3, planChunk/ps + 200, 3*planChunk/ps + 1}
	for _, p := range changed {
		for j := range ps {
			v2[p*ps+int64(j)] = byte(p + int64(j))
		}
	}
	unchangedBut := func(pages []int64) []Extent {
		var ext []Extent
		pos := int64(0)
		for _, p := range pages {
			ext = append(ext, Extent{Off: pos, Len: p*ps - pos, Unchanged: true}, Extent{Off: p * ps, Len: ps})
			pos = (p + 1) * ps
		}
		return append(ext, Extent{Off: pos, Len: size - pos, Unchanged: true})
	}
	// Epoch 3 copies page 5 (chunk 0, kept in epoch 2) over page 7 of
	// chunk 1, and the first page of chunk 2 (kept in epoch 3, right
	// after a chunk planned block by block) over the first page of chunk 3.
	v3 := bytes.Clone(v2)
	copy(v3[(planChunk/ps+7)*ps:], v3[5*ps:6*ps])
	copy(v3[3*planChunk:], v3[2*planChunk:2*planChunk+ps])
	if blockhash.IsZero(v3[5*ps:6*ps]) || blockhash.IsZero(v3[2*planChunk:2*planChunk+ps]) {
		t.Fatal("a copied page is zero: pick another seed")
	}
	changed3 := []int64{planChunk/ps + 7, 3 * planChunk / ps}
	target := func(b []byte, prev *blockhash.Table, ext []Extent) *Snapshot {
		tg := Target{Kind: vmspec.KindRAM, Name: "pc.ram", Size: size, BlockSize: ps, Reader: bytes.NewReader(b), Prev: prev}
		if ext != nil {
			tg.Extents = func(context.Context, int64, int64) ([]Extent, error) { return ext, nil }
		}
		return &Snapshot{Cut: time.Unix(1, 0), Targets: []Target{tg}, Close: func() error { return nil }}
	}
	run := func(t *testing.T, keep bool, choice baseChoice) []*Plan {
		defer func(was bool) { keepChunks = was }(keepChunks)
		keepChunks = keep
		dd, err := NewDedup(0)
		if err != nil {
			t.Fatal(err)
		}
		p1, err := buildPlan(context.Background(), 1, target(v1, nil, nil), baseFresh, nil, dd)
		if err != nil {
			t.Fatal(err)
		}
		key := TableKey(vmspec.KindRAM, "pc.ram")
		base := func(p *Plan) *Index {
			if choice == baseFresh {
				return nil
			}
			return &Index{Epoch: p.Epoch, Tables: p.Next.Tables}
		}
		// A Dedup that starts empty at epoch 2, as a restarted sender's:
		// only the pages epoch 2 plans teach it page 5.
		if dd, err = NewDedup(0); err != nil {
			t.Fatal(err)
		}
		p2, err := buildPlan(context.Background(), 2, target(v2, p1.Next.Tables[key], unchangedBut(changed)), choice, base(p1), dd)
		if err != nil {
			t.Fatal(err)
		}
		p3, err := buildPlan(context.Background(), 3, target(v3, p2.Next.Tables[key], unchangedBut(changed3)), choice, base(p2), dd)
		if err != nil {
			t.Fatal(err)
		}
		return []*Plan{p1, p2, p3}
	}
	for _, tc := range []struct {
		name   string
		choice baseChoice
		kept   []int64 // bytes kept in epochs 2 and 3
	}{
		{"committed", baseCommitted, []int64{2 * planChunk, 2 * planChunk}},
		{"fresh", baseFresh, []int64{0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			with, without := run(t, true, tc.choice), run(t, false, tc.choice)
			for i := range with {
				a, b := with[i], without[i]
				if a.ID != b.ID || a.Bytes != b.Bytes || a.Digest != b.Digest || !reflect.DeepEqual(a.Items, b.Items) {
					t.Errorf("epoch %d: %d items, %d bytes with kept chunks; %d items, %d bytes block by block", i+1, len(a.Items), a.Bytes, len(b.Items), b.Bytes)
				}
				type counts struct{ scanned, changed, zeroed, data, refs, zeros, dups int64 }
				ca := counts{a.Scanned, a.Changed, a.Zeroed, a.RAMDataPages, a.RAMRefPages, a.RAMZeroPages, a.RAMDupPages}
				cb := counts{b.Scanned, b.Changed, b.Zeroed, b.RAMDataPages, b.RAMRefPages, b.RAMZeroPages, b.RAMDupPages}
				if ca != cb {
					t.Errorf("epoch %d: counters %+v with kept chunks, %+v block by block", i+1, ca, cb)
				}
				key := TableKey(vmspec.KindRAM, "pc.ram")
				if !slices.Equal(a.Next.Tables[key].Hashes, b.Next.Tables[key].Hashes) {
					t.Errorf("epoch %d: tables differ", i+1)
				}
				if b.kept != 0 {
					t.Fatalf("epoch %d: %d bytes kept with keepChunks off", i+1, b.kept)
				}
				if i > 0 && a.kept != tc.kept[i-1] {
					t.Errorf("epoch %d: %d bytes kept, want %d", i+1, a.kept, tc.kept[i-1])
				}
				// Epoch 2's Dedup starts empty: its kept chunks feed it. By
				// epoch 3 it holds epoch 2's table whole, so they need not.
				if want := map[int]int64{1: 0, 2: a.kept}[i]; a.keptIndexed != want {
					t.Errorf("epoch %d: %d bytes kept without feeding the RAM index, want %d", i+1, a.keptIndexed, want)
				}
			}
			if tc.choice == baseCommitted && with[2].RAMRefPages < 2 {
				t.Errorf("epoch 3: %d references, want the 2 copied pages", with[2].RAMRefPages)
			}
		})
	}
}
