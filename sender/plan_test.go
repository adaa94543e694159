package sender

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

type mutableReader struct{ b []byte }

func (m *mutableReader) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(m.b).ReadAt(p, off)
}

func snapOf(disk []byte, ext []Extent) (*Snapshot, *mutableReader) {
	r := &mutableReader{b: disk}
	t := Target{Kind: vmspec.KindDisk, Name: "vda", Size: int64(len(disk)), BlockSize: 4096, Reader: r}
	if ext != nil {
		t.Extents = func(context.Context, int64, int64) ([]Extent, error) { return ext, nil }
	}
	return &Snapshot{Cut: time.Unix(1, 0), Targets: []Target{t}, Close: func() error { return nil }}, r
}

func TestPlanSendsOnlyChanges(t *testing.T) {
	disk := make([]byte, 64*4096)
	copy(disk[4096:], bytes.Repeat([]byte{1}, 3*4096)) // blocks 1-3: data, coalesce into one extent
	copy(disk[10*4096:], bytes.Repeat([]byte{2}, 100)) // block 10: partial data
	snap, r := snapOf(disk, nil)
	p, err := BuildPlan(context.Background(), 1, snap, baseFresh, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Items) != 2 || p.Items[0].Off != 4096 || p.Items[0].Len != 3*4096 || p.Items[1].Off != 10*4096 {
		t.Fatalf("fresh plan items: %+v", p.Items)
	}
	if p.Bytes != 4*4096 {
		t.Fatalf("bytes = %d", p.Bytes)
	}
	// Same content against its own index: nothing to send.
	base := &Index{Epoch: 1, Tables: p.Next.Tables}
	p2, err := BuildPlan(context.Background(), 2, snap, baseCommitted, base)
	if err != nil {
		t.Fatal(err)
	}
	if len(p2.Items) != 0 || p2.States[0].Digest != p.States[0].Digest {
		t.Fatalf("unchanged source planned %d items", len(p2.Items))
	}
	// Zeroing a data block goes as a zero run, not data.
	clear(r.b[2*4096 : 3*4096])
	p3, _ := BuildPlan(context.Background(), 2, snap, baseCommitted, base)
	if len(p3.Items) != 1 || p3.Items[0].Type != wire.TypeZeroRun || p3.Bytes != 0 {
		t.Fatalf("zeroed block: %+v", p3.Items)
	}
	// Unknown replica content: everything non-zero as data, the rest as
	// zero runs, so stale replica data is overwritten.
	p4, _ := BuildPlan(context.Background(), 5, snap, baseUnknown, nil)
	var zeros int64
	for _, it := range p4.Items {
		if it.Type == wire.TypeZeroRun {
			zeros += it.Len
		}
	}
	if zeros+int64(p4.Bytes) != int64(len(disk)) {
		t.Fatalf("full pass covers %d of %d bytes", zeros+int64(p4.Bytes), len(disk))
	}
}

func TestPlanSkipsKnownZeroExtents(t *testing.T) {
	disk := make([]byte, 4*planChunk)
	disk[3*planChunk+5] = 9
	reads := 0
	snap, r := snapOf(disk, []Extent{{Off: 0, Len: 3 * planChunk, Zero: true}, {Off: 3 * planChunk, Len: planChunk}})
	snap.Targets[0].Reader = readerFunc(func(p []byte, off int64) (int, error) { reads++; return r.ReadAt(p, off) })
	p, err := BuildPlan(context.Background(), 1, snap, baseFresh, nil)
	if err != nil {
		t.Fatal(err)
	}
	if reads != 1 || p.Scanned != planChunk {
		t.Fatalf("read %d chunks (%d bytes), want only the allocated one", reads, p.Scanned)
	}
	if want := blockhash.NewZero(int64(len(disk)), 4096); p.Next.Tables["disk/vda"].Equal(want) {
		t.Fatal("data block missing from the table")
	}
}

type readerFunc func(p []byte, off int64) (int, error)

func (f readerFunc) ReadAt(p []byte, off int64) (int, error) { return f(p, off) }

func TestFrameDetectsChangedSource(t *testing.T) {
	disk := bytes.Repeat([]byte{3}, 16*4096)
	snap, r := snapOf(disk, nil)
	p, err := BuildPlan(context.Background(), 1, snap, baseFresh, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Frame(snap, 0); err != nil {
		t.Fatal(err)
	}
	r.b[5*4096] = 4
	if _, err := p.Frame(snap, 0); !errors.Is(err, ErrSourceChanged) {
		t.Fatalf("got %v, want ErrSourceChanged", err)
	}
}

func TestPlanRejectsRemovedTarget(t *testing.T) {
	snap, _ := snapOf(make([]byte, 4096), nil)
	base := &Index{Epoch: 1, Tables: map[string]*blockhash.Table{"disk/vda": blockhash.NewZero(4096, 4096), "disk/vdb": blockhash.NewZero(4096, 4096)}}
	if _, err := BuildPlan(context.Background(), 2, snap, baseCommitted, base); err == nil {
		t.Fatal("plan that drops a replicated disk accepted")
	}
}

func TestIndexRoundTrip(t *testing.T) {
	x := &Index{Epoch: 3, Tables: map[string]*blockhash.Table{"disk/vda": blockhash.NewZero(1<<20, 65536), "ram/pc.ram": blockhash.NewZero(1<<16, 4096)}}
	x.StateID = x.ComputeStateID()
	b := MarshalIndex(x)
	y, err := UnmarshalIndex(b)
	if err != nil || y.Epoch != 3 || y.StateID != x.StateID || len(y.Tables) != 2 || y.ComputeStateID() != x.StateID {
		t.Fatalf("round trip: %v %+v", err, y)
	}
	b[len(b)/2] ^= 1
	if _, err := UnmarshalIndex(b); !errors.Is(err, ErrCorruptState) {
		t.Fatalf("corrupt state accepted: %v", err)
	}
}

func FuzzUnmarshalIndex(f *testing.F) {
	x := &Index{Epoch: 3, Tables: map[string]*blockhash.Table{"disk/vda": blockhash.NewZero(1<<16, 4096)}}
	f.Add(MarshalIndex(x))
	f.Fuzz(func(t *testing.T, b []byte) {
		y, err := UnmarshalIndex(b)
		if err != nil {
			return
		}
		if _, err := UnmarshalIndex(MarshalIndex(y)); err != nil {
			t.Fatal(err)
		}
	})
}

func TestPlanReadsOnlyAllocatedBlocks(t *testing.T) {
	disk := make([]byte, planChunk)
	disk[5] = 1
	disk[planChunk-1] = 2
	var scanned []int64
	snap, r := snapOf(disk, []Extent{{Off: 0, Len: 8192}, {Off: 8192, Len: planChunk - 16384, Zero: true}, {Off: planChunk - 8192, Len: 8192}})
	snap.Targets[0].Reader = readerFunc(func(p []byte, off int64) (int, error) {
		scanned = append(scanned, off, int64(len(p)))
		return r.ReadAt(p, off)
	})
	p, err := BuildPlan(context.Background(), 1, snap, baseFresh, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Scanned != 16384 || len(scanned) != 4 || scanned[0] != 0 || scanned[2] != planChunk-8192 {
		t.Fatalf("reads (offset, length): %v, scanned %d; want only the two allocated blocks", scanned, p.Scanned)
	}
	if len(p.Items) != 2 || p.Bytes != 8192 {
		t.Fatalf("items %+v", p.Items)
	}
}

// TestPlanTrustsUnchangedExtents: blocks a dirty bitmap marks unchanged take
// their hashes from the previous cut's table and are not read, unless the
// replica lacks them (an epoch was cut but never sent): then they are read
// and sent.
func TestPlanTrustsUnchangedExtents(t *testing.T) {
	const bs = 4096
	v1 := make([]byte, 32*bs)
	for i := range v1 {
		v1[i] = byte(i*7 + 1)
	}
	snap1, _ := snapOf(v1, nil)
	p1, err := BuildPlan(context.Background(), 1, snap1, baseFresh, nil)
	if err != nil {
		t.Fatal(err)
	}
	prev := p1.Next.Tables[TableKey(vmspec.KindDisk, "vda")]

	// Cut 2 changes blocks 4 and 20 (one zeroed); the bitmap says so.
	v2 := bytes.Clone(v1)
	copy(v2[4*bs:], bytes.Repeat([]byte{0xAB}, bs))
	clear(v2[20*bs : 21*bs])
	ext := []Extent{{Off: 0, Len: 4 * bs, Unchanged: true}, {Off: 4 * bs, Len: bs}, {Off: 5 * bs, Len: 15 * bs, Unchanged: true}, {Off: 20 * bs, Len: bs}, {Off: 21 * bs, Len: 11 * bs, Unchanged: true}}
	var read []int64
	full, _ := snapOf(v2, nil)
	snap2, r := snapOf(v2, ext)
	snap2.Targets[0].Prev = prev
	snap2.Targets[0].Reader = readerFunc(func(p []byte, off int64) (int, error) {
		for o := off; o < off+int64(len(p)); o += bs {
			read = append(read, o/bs)
		}
		return r.ReadAt(p, off)
	})
	base := &Index{Epoch: 1, Tables: p1.Next.Tables}
	p2, err := BuildPlan(context.Background(), 2, snap2, baseCommitted, base)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{4, 20}; !slices.Equal(read, want) {
		t.Errorf("blocks read while planning: %v, want %v", read, want)
	}
	ref, _ := BuildPlan(context.Background(), 2, full, baseCommitted, base)
	if p2.States[0].Digest != ref.States[0].Digest || p2.ID != ref.ID {
		t.Errorf("plan with the bitmap differs from a full comparison")
	}
	if len(p2.Items) != 2 || p2.Items[0].Off != 4*bs || p2.Items[1].Type != wire.TypeZeroRun {
		t.Errorf("items: %+v", p2.Items)
	}

	// The replica is still at the empty state (epoch 1 never arrived):
	// unchanged blocks differ from it and must be read and sent.
	read = nil
	p3, err := BuildPlan(context.Background(), 1, snap2, baseFresh, nil)
	if err != nil {
		t.Fatal(err)
	}
	ref3, _ := BuildPlan(context.Background(), 1, full, baseFresh, nil)
	if p3.ID != ref3.ID || p3.Bytes != ref3.Bytes {
		t.Errorf("against an older base: %d bytes, a full comparison %d", p3.Bytes, ref3.Bytes)
	}
	for i := range p3.Items {
		if _, err := p3.Frame(snap2, i); err != nil {
			t.Fatalf("item %d: %v", i, err)
		}
	}

	// A previous table of the wrong shape is refused, not trusted.
	snap2.Targets[0].Prev = blockhash.NewZero(16*bs, bs)
	if _, err := BuildPlan(context.Background(), 2, snap2, baseCommitted, base); err == nil {
		t.Error("a previous table of another size was accepted")
	}
}

// TestDedupNeverTrustsAStaleIndex: the index says disk page 5 holds X,
// but in this cut it does not (a change the index was not told of): the
// memory page holding X must travel as data, not as a reference.
func TestDedupNeverTrustsAStaleIndex(t *testing.T) {
	const ps = vmspec.PageSize
	x := bytes.Repeat([]byte{0xC3}, ps)
	disk := make([]byte, 16*ps)
	ram := make([]byte, 8*ps)
	copy(ram[2*ps:], x)
	dd, err := NewDedup(0)
	if err != nil {
		t.Fatal(err)
	}
	dd.update("vda", 5*ps, x)
	dd.scanned("vda") // as if read whole earlier; the planner will not re-read it
	snap := &Snapshot{Cut: time.Unix(1, 0), Close: func() error { return nil }, Targets: []Target{
		{Kind: vmspec.KindDisk, Name: "vda", Size: int64(len(disk)), BlockSize: 4 * ps, Reader: bytes.NewReader(disk),
			Prev: blockhash.NewZero(int64(len(disk)), 4*ps),
			Extents: func(context.Context, int64, int64) ([]Extent, error) {
				return []Extent{{Off: 0, Len: int64(len(disk)), Unchanged: true}}, nil
			}},
		{Kind: vmspec.KindRAM, Name: "pc.ram", Size: int64(len(ram)), BlockSize: ps, Reader: bytes.NewReader(ram)},
	}}
	p, err := buildPlan(context.Background(), 1, snap, baseFresh, nil, dd)
	if err != nil {
		t.Fatal(err)
	}
	if p.RAMRefPages != 0 || p.RAMDataPages != 1 {
		t.Fatalf("stale index: %d references, %d data pages", p.RAMRefPages, p.RAMDataPages)
	}
	// Once the disk really holds X there (and the index learns it, as it
	// does from the blocks the planner reads), the page is a reference.
	copy(disk[5*ps:], x)
	snap.Targets[0].Reader = bytes.NewReader(disk)
	prev := blockhash.NewZero(int64(len(disk)), 4*ps)
	for i := range prev.Hashes {
		prev.Hashes[i] = blockhash.Hash(disk[i*4*ps : (i+1)*4*ps])
	}
	snap.Targets[0].Prev = prev
	dd.update("vda", 4*ps, disk[4*ps:8*ps])
	p, err = buildPlan(context.Background(), 1, snap, baseFresh, nil, dd)
	if err != nil {
		t.Fatal(err)
	}
	if p.RAMRefPages != 1 || len(p.Items) != 2 || p.Items[1].Type != wire.TypePageRef || p.Items[1].SrcOff != 5*ps {
		t.Fatalf("valid index: %+v", p.Items)
	}
	f, err := p.Frame(snap, 1)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := f.(*wire.PageRef); !ok || r.Page != 2 || r.Count != 1 || r.SrcOffset != 5*ps || r.Source != wire.RefDisk {
		t.Fatalf("frame %+v", f)
	}
	// Planned, the Dedup keeps nothing of the snapshot (a sender keeps one
	// per VM between epochs): not the snapshot, not the read-ahead window
	// the reference was verified through.
	if dd.snap != nil || dd.old != nil || dd.window.buf != nil {
		t.Fatalf("after the plan the Dedup still holds the snapshot (%v), the replica's tables (%v) or %d bytes of read-ahead", dd.snap != nil, dd.old != nil, cap(dd.window.buf))
	}
}

// TestPlanReadsPastEndAsZeros: a target whose reader ends before its size
// (an image file shorter than its virtual size) reads as zeros past the
// end, even where the planner's buffer held other bytes from an earlier
// chunk.
func TestPlanReadsPastEndAsZeros(t *testing.T) {
	const size = 2 * planChunk
	data := bytes.Repeat([]byte{0xaa}, planChunk+100)
	snap, _ := snapOf(make([]byte, size), nil)
	snap.Targets[0].Reader = bytes.NewReader(data)
	p, err := BuildPlan(context.Background(), 1, snap, baseFresh, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	copy(want, data)
	got := p.Next.Tables[TableKey(vmspec.KindDisk, "vda")]
	if exp := blockhash.Of(want, 4096); !got.Equal(exp) {
		for i := range got.Hashes {
			if got.Hashes[i] != exp.Hashes[i] {
				t.Fatalf("block %d (of %d) does not hash as the target's content with zeros past its end", i, len(got.Hashes))
			}
		}
	}
	if p.Bytes != planChunk+4096 {
		t.Fatalf("planned %d bytes of data, want %d", p.Bytes, planChunk+4096)
	}
}

// TestPlanLeavesBaseTables: the plan reads the base's tables without
// copying them (they are shared, blockhash.Table) and changes none, also
// when the target grew; its own tables are new.
func TestPlanLeavesBaseTables(t *testing.T) {
	disk := bytes.Repeat([]byte{7}, 8*4096)
	snap, r := snapOf(disk, nil)
	p1, err := BuildPlan(context.Background(), 1, snap, baseFresh, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := &Index{Epoch: 1, Tables: p1.Next.Tables}
	k := TableKey(vmspec.KindDisk, "vda")
	before := base.Tables[k].Clone()
	for _, grow := range []int{0, 3 * 4096} {
		r.b = append(bytes.Clone(disk), make([]byte, grow)...)
		r.b[4096] = 9
		snap.Targets[0].Size = int64(len(r.b))
		p, err := BuildPlan(context.Background(), 2, snap, baseCommitted, base)
		if err != nil {
			t.Fatal(err)
		}
		if !base.Tables[k].Equal(before) {
			t.Fatalf("growing by %d: planning changed the base's table", grow)
		}
		next := p.Next.Tables[k]
		if &next.Hashes[0] == &base.Tables[k].Hashes[0] {
			t.Fatalf("growing by %d: the plan's table shares the base's hashes", grow)
		}
		if len(p.Items) != 1 || p.Items[0].Off != 4096 {
			t.Fatalf("growing by %d: planned %+v, want block 1 only", grow, p.Items)
		}
	}
}
