package sender

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/internal/bufpool"
	"github.com/drsync/drsync/sender/blockplan"
	"github.com/drsync/drsync/sender/protocol"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// ErrSourceChanged means a snapshot's content changed between planning and
// sending; the epoch is abandoned rather than sending a torn state.
var ErrSourceChanged = protocol.ErrSourceChanged

// PlanItem is one item of an epoch, without its data.
type PlanItem struct {
	Type     wire.Type
	Target   uint16
	Off, Len int64    // bytes (for MemRun and PageRef too; their frames carry pages)
	Hashes   []uint64 // per block, data items and references
	DataHash uint64
	dev      []byte // device state chunk
	// PageRef: the kind, target and byte offset of the pages copied from.
	Source    wire.RefSource
	SrcTarget uint16
	SrcOff    int64
}

// Plan is an epoch worked out against the replica's known content: what to
// send, in which order, and what the replica will hold afterwards.
type Plan struct {
	Epoch   uint64
	Cut     time.Time
	Group   *vmspec.GroupCut // the snapshot's group tag, nil if none
	Base    baseChoice
	Targets []wire.Target
	Items   []PlanItem
	Sums    []wire.Summary
	ID      uint64
	Bytes   uint64 // data bytes in items
	Digest  uint64
	States  []wire.TargetDigest
	Next    *Index
	// Scanned counts bytes compared; Changed and Zeroed the bytes that go
	// as data and as zero runs.
	Scanned, Changed, Zeroed int64
	// RAM pages of the epoch by how they travel; RAMDupPages are the
	// references (among RAMRefPages) to other memory pages.
	RAMDataPages, RAMRefPages, RAMZeroPages, RAMDupPages int64

	dd *Dedup // nil: no references

	kept        int64 // bytes planned by keepChunk, for tests
	keptIndexed int64 // of which the RAM index held already, for tests

	// A plan is sent while it is still being built (fill): mu guards
	// Items, Sums, Bytes, ID, open and the outcome; the rest (Next's
	// tables, States, Digest, the counts above) are written before the
	// plan is marked complete and read only after.
	mu       sync.Mutex
	grew     *sync.Cond
	waiting  bool // someone waits on grew
	poked    bool // poke came: the next waitItems returns at once
	complete bool
	err      error // why fill failed
	open     bool  // begun on a connection that allows open epochs (beginOpen)
}

// planChunk is how much of a target is read at once while planning. Every
// VM planning at the same time holds one, so eight VMs whose epochs meet
// hold 8 MiB, not 32; the 1 Gbit/s initial sync, which reads its disks
// whole, showed no difference from 4 MiB.
const planChunk = 1 << 20

// blockBufs holds the planner's read buffers and the data of frames
// between uses, shared by every Sender of the process: a VM between
// epochs holds none (each held a 4 MiB read buffer and its frames' data
// until the garbage collector came), and two per size class stay idle at
// most (a planner's and a sending loop's). A frame of a few pages takes a
// small class's buffer, not one that fits the largest frame.
var blockBufs = bufpool.New(max(planChunk, wire.MaxData), 2)

// recycle gives back the data buffer of a frame Frame returned, once it
// is encoded; f must not be used after.
func recycle(f wire.Item) {
	switch f := f.(type) {
	case *wire.DiskExtent:
		blockBufs.Put(f.Data)
	case *wire.MemRun:
		blockBufs.Put(f.Data)
	}
}

// BuildPlan compares snap against base (the replica's tables; nil tables
// mean unknown content, so every block is sent) and lays out epoch.
func BuildPlan(ctx context.Context, epoch uint64, snap *Snapshot, choice baseChoice, base *Index) (*Plan, error) {
	return buildPlan(ctx, epoch, snap, choice, base, nil)
}

// buildPlan is BuildPlan with memory pages turned into references to disk
// pages where dd finds them.
func buildPlan(ctx context.Context, epoch uint64, snap *Snapshot, choice baseChoice, base *Index, dd *Dedup) (*Plan, error) {
	p, olds, err := newPlan(epoch, snap, choice, base, dd)
	if err != nil {
		return nil, err
	}
	if err := p.fill(ctx, snap, choice, base, olds); err != nil {
		return nil, err
	}
	return p, nil
}

// newPlan checks snap's targets against base and returns the empty plan
// of epoch, with what the replica holds of each target, for fill.
func newPlan(epoch uint64, snap *Snapshot, choice baseChoice, base *Index, dd *Dedup) (*Plan, []*blockhash.Table, error) {
	p := &Plan{Epoch: epoch, Cut: snap.Cut, Group: snap.Group, Base: choice, Next: &Index{Epoch: epoch, Tables: map[string]*blockhash.Table{}}, dd: dd}
	p.grew = sync.NewCond(&p.mu)
	if len(snap.Targets) > wire.MaxTargets {
		return nil, nil, fmt.Errorf("plan epoch %d: %d targets, at most %d", epoch, len(snap.Targets), wire.MaxTargets)
	}
	// What the replica holds of each target (nil: unknown), all known
	// before any is scanned: a memory page may refer to a later one.
	olds := make([]*blockhash.Table, len(snap.Targets))
	for i, t := range snap.Targets {
		if t.Kind == vmspec.KindRAM && (t.BlockSize != vmspec.PageSize || t.Size%vmspec.PageSize != 0) {
			return nil, nil, fmt.Errorf("plan epoch %d: RAM %s of %d bytes at block size %d: must be whole %d-byte pages", epoch, t.Name, t.Size, t.BlockSize, vmspec.PageSize)
		}
		if err := vmspec.ValidTargetName(t.Name); err != nil {
			return nil, nil, fmt.Errorf("plan epoch %d: %w", epoch, err)
		}
		wt := wire.Target{ID: uint16(i), Kind: t.Kind, Name: t.Name, Size: uint64(t.Size), BlockSize: uint32(t.BlockSize)}
		p.Targets = append(p.Targets, wt)
		k := TableKey(t.Kind, t.Name)
		if _, dup := p.Next.Tables[k]; dup {
			return nil, nil, fmt.Errorf("plan epoch %d: target %s listed twice", epoch, k)
		}
		p.Next.Tables[k] = nil // reserved, for the duplicate check
		switch choice {
		case baseFresh:
			olds[i] = blockhash.NewZero(t.Size, t.BlockSize)
		case baseCommitted, basePending, baseFetched:
			if bt := base.Tables[k]; bt != nil {
				if bt.BlockSize != t.BlockSize {
					return nil, nil, fmt.Errorf("plan epoch %d: %s block size changed from %d to %d; the replica cannot follow", epoch, k, bt.BlockSize, t.BlockSize)
				}
				olds[i] = bt // read only: tables are shared (blockhash.Table)
				if bt.Size != t.Size {
					olds[i] = bt.Clone()
					olds[i].Resize(t.Size)
				}
			} else {
				olds[i] = blockhash.NewZero(t.Size, t.BlockSize)
			}
		}
	}
	return p, olds, nil
}

// fill plans every target of snap, then the device state, and marks p
// complete (with its error, if it failed): its items can be sent as they
// are added.
func (p *Plan) fill(ctx context.Context, snap *Snapshot, choice baseChoice, base *Index, olds []*blockhash.Table) (err error) {
	defer func() { p.finish(err) }()
	epoch, dd := p.Epoch, p.dd
	if dd != nil {
		dd.begin(snap, olds)
		defer dd.end()
	}
	for i, t := range snap.Targets {
		if dd != nil {
			dd.planning(i)
		}
		next, err := p.scanTarget(ctx, uint16(i), t, olds[i])
		if err != nil {
			return fmt.Errorf("plan epoch %d: %s %s: %w", epoch, kindWord(t.Kind), t.Name, err)
		}
		k := TableKey(t.Kind, t.Name)
		p.Next.Tables[k] = next
		p.States = append(p.States, wire.TargetDigest{Target: uint16(i), Digest: next.Digest()})
	}
	if base != nil && choice != baseUnknown && choice != baseFresh {
		for k := range base.Tables {
			if _, ok := p.Next.Tables[k]; !ok {
				return fmt.Errorf("plan epoch %d: the replica holds %s, which this VM no longer has; removing a target is not supported", epoch, k)
			}
		}
	}
	for off := 0; off < len(snap.DeviceState); off += wire.MaxData {
		chunk := snap.DeviceState[off:min(off+wire.MaxData, len(snap.DeviceState))]
		p.add(PlanItem{Type: wire.TypeDeviceState, Off: int64(off), Len: int64(len(chunk)), DataHash: xxhash.Sum64(chunk), dev: chunk})
	}
	p.Next.StateID = p.Next.ComputeStateID()
	d := wire.NewEpochDigest(epoch)
	for _, s := range p.Sums {
		d.Add(s)
	}
	p.Digest = d.Sum()
	id := wire.GroupPlanID(wire.PlanID(epoch, p.Targets, p.Sums), p.Group)
	p.mu.Lock()
	if !p.open {
		p.ID = id
	}
	p.mu.Unlock()
	return nil
}

// finish marks p complete, failed if err is not nil, and wakes whoever
// waits for items.
func (p *Plan) finish(err error) {
	p.mu.Lock()
	p.complete, p.err = true, err
	p.grew.Broadcast()
	p.mu.Unlock()
}

// beginOpen records that p is begun on a connection that allows open
// epochs (wire.VersionOpen): it is then open, however far it is planned,
// so that every staged epoch of such a connection is resumed the same
// way, by the identity of its first items (prefix).
func (p *Plan) beginOpen(allowed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = p.open || allowed
}

// prefix is the wire.OpenPlanID of p's first n items, false while fewer
// are planned.
func (p *Plan) prefix(n uint64) (uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if uint64(len(p.Sums)) < n {
		return 0, false
	}
	return wire.OpenPlanID(p.Epoch, p.Group, p.Sums[:n]), true
}

// waitPrefix is prefix once p has n items, or false if it completes (or
// fails) with fewer.
func (p *Plan) waitPrefix(n uint64) (uint64, bool) {
	for {
		if id, ok := p.prefix(n); ok {
			return id, true
		}
		if _, _, complete, _ := p.progress(); complete {
			return 0, false
		}
		p.waitItems(int(n) - 1)
	}
}

// progress is how far the planner is: items and data bytes so far,
// whether the plan is complete, and why it failed.
func (p *Plan) progress() (items int, bytes uint64, complete bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.Items), p.Bytes, p.complete, p.err
}

// waitItems returns once p has more than n items, is complete, or poke
// was called.
func (p *Plan) waitItems(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.Items) <= n && !p.complete && !p.poked {
		p.waiting = true
		p.grew.Wait()
	}
	p.poked = false
}

// poke wakes waitItems, now or at its next call (the connection failed:
// the sender stops waiting for the planner).
func (p *Plan) poke() {
	p.mu.Lock()
	p.poked = true
	p.grew.Broadcast()
	p.mu.Unlock()
}

// item is item i, which the planner has added.
func (p *Plan) item(i int) PlanItem {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Items[i]
}

func kindWord(k vmspec.TargetKind) string {
	if k == vmspec.KindRAM {
		return "RAM"
	}
	return k.String()
}

// refSrcOffset is a reference's source as the wire carries it: a byte
// offset into a disk, a page index into memory.
func refSrcOffset(it PlanItem) uint64 {
	if it.Source == wire.RefPage {
		return uint64(it.SrcOff / vmspec.PageSize)
	}
	return uint64(it.SrcOff)
}

func (p *Plan) add(it PlanItem) {
	s := wire.Summary{Seq: uint64(len(p.Items)), Type: it.Type, Target: it.Target, Offset: uint64(it.Off), Length: uint64(it.Len), DataHash: it.DataHash}
	if it.Type == wire.TypeMemRun {
		s.Offset /= vmspec.PageSize
	}
	if it.Type == wire.TypePageRef {
		s.Offset, s.Length, s.DataHash = uint64(it.Off/vmspec.PageSize), uint64(it.Len/vmspec.PageSize), 0
		s.Source, s.SrcTarget, s.SrcOffset = it.Source, it.SrcTarget, refSrcOffset(it)
	}
	if it.Type == wire.TypeDeviceState {
		s.Target = 0
	}
	p.mu.Lock()
	p.Bytes += it.payloadBytes()
	p.Items = append(p.Items, it)
	p.Sums = append(p.Sums, s)
	if p.waiting {
		p.waiting = false
		p.grew.Broadcast()
	}
	p.mu.Unlock()
}

// payloadBytes is what the item contributes to Plan.Bytes: the data it
// carries. Zero runs and page references carry none; progress counts sent
// bytes the same way, so that sent never passes the plan's total.
func (it PlanItem) payloadBytes() uint64 {
	if it.Type == wire.TypeZeroRun || it.Type == wire.TypePageRef {
		return 0
	}
	return uint64(it.Len)
}

// runBuilder coalesces consecutive changed blocks into items.
type runBuilder struct {
	p      *Plan
	target uint16
	typ    wire.Type // data type of this target
	cur    *PlanItem
	h      *xxhash.Digest
}

func (rb *runBuilder) flush() {
	if rb.cur == nil {
		return
	}
	if rb.cur.Type != wire.TypeZeroRun && rb.cur.Type != wire.TypePageRef {
		rb.cur.DataHash = rb.h.Sum64()
	}
	rb.p.add(*rb.cur)
	rb.cur = nil
}

func (rb *runBuilder) block(off int64, data []byte, zero bool, hash uint64) {
	typ := rb.typ
	if zero {
		typ = wire.TypeZeroRun
	}
	n := int64(len(data))
	if c := rb.cur; c != nil && blockplan.Extends(runOf(c), blockplan.Run{Type: typ, Off: off, Len: n}) {
		c.Len += n
	} else {
		rb.flush()
		rb.cur = &PlanItem{Type: typ, Target: rb.target, Off: off, Len: n}
		rb.h.Reset()
	}
	if !zero {
		rb.cur.Hashes = append(rb.cur.Hashes, hash)
		rb.h.Write(data)
	}
}

// ref adds a page that travels as a reference to a page of a disk (kind
// RefDisk) or of memory (RefPage) at byte offset srcOff.
func (rb *runBuilder) ref(off int64, hash uint64, kind wire.RefSource, src uint16, srcOff int64) {
	blk := blockplan.Run{Type: wire.TypePageRef, Off: off, Len: vmspec.PageSize, Source: kind, SrcTarget: src, SrcOff: srcOff}
	if c := rb.cur; c != nil && blockplan.Extends(runOf(c), blk) {
		c.Len += vmspec.PageSize
	} else {
		rb.flush()
		rb.cur = &PlanItem{Type: wire.TypePageRef, Target: rb.target, Off: off, Len: vmspec.PageSize, Source: kind, SrcTarget: src, SrcOff: srcOff}
	}
	rb.cur.Hashes = append(rb.cur.Hashes, hash)
}

func runOf(it *PlanItem) blockplan.Run {
	return blockplan.Run{Type: it.Type, Off: it.Off, Len: it.Len, Source: it.Source, SrcTarget: it.SrcTarget, SrcOff: it.SrcOff}
}

// readBlocks reads p at off. A short read at the target's end leaves the
// rest of p zero, as the bytes past the end of a target read.
func readBlocks(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if err != nil && err != io.EOF {
		return err
	}
	if n < len(p) {
		clear(p[n:])
	}
	return nil
}

// scanTarget compares every block of t with old and returns the new table.
func (p *Plan) scanTarget(ctx context.Context, id uint16, t Target, old *blockhash.Table) (*blockhash.Table, error) {
	if t.Size <= 0 || t.BlockSize < 512 || t.BlockSize&(t.BlockSize-1) != 0 {
		return nil, fmt.Errorf("size %d block size %d", t.Size, t.BlockSize)
	}
	// Every entry is set below, block by block.
	next := &blockhash.Table{BlockSize: t.BlockSize, Size: t.Size, Hashes: make([]uint64, blockhash.Blocks(t.Size, t.BlockSize))}
	typ := wire.TypeDiskExtent
	if t.Kind == vmspec.KindRAM {
		typ = wire.TypeMemRun
	}
	rb := &runBuilder{p: p, target: id, typ: typ, h: xxhash.New()}
	var extents []Extent
	if t.Extents != nil {
		var err error
		if extents, err = t.Extents(ctx, 0, t.Size); err != nil {
			return nil, fmt.Errorf("allocation map: %w", err)
		}
	}
	bs := int64(t.BlockSize)
	if t.Prev != nil && (t.Prev.Size != t.Size || t.Prev.BlockSize != t.BlockSize) {
		return nil, fmt.Errorf("previous cut's table is %d bytes at %d-byte blocks, the target %d at %d", t.Prev.Size, t.Prev.BlockSize, t.Size, t.BlockSize)
	}
	// The content index needs every disk read whole once; after that the
	// blocks read for changes keep it current.
	indexDisk := p.dd != nil && t.Kind == vmspec.KindDisk
	if indexDisk && p.dd.needsFullRead(t.Name) {
		t.Prev = nil
	}
	// Memory pages feed the RAM index; one fed the previous cut's table
	// whole needs no feeding from chunks kept from it.
	ramIndexed := t.Kind == vmspec.KindRAM && p.dd != nil
	ramFed := ramIndexed && p.dd.ramScan(t.Name, t.Prev)
	chunk := planChunk - planChunk%bs
	if chunk == 0 {
		chunk = bs
	}
	buf := blockBufs.Get(int(chunk))
	defer blockBufs.Put(buf)
	ei := 0
	for off := int64(0); off < t.Size; off += chunk {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := min(chunk, t.Size-off)
		// Skip the allocation-map entries that end before this chunk.
		for ei < len(extents) && extents[ei].Off+extents[ei].Len <= off {
			ei++
		}
		allZero := ei < len(extents) && coveredBy(extents[ei:], off, off+n, isZero)
		if !allZero && p.keepChunk(id, t, old, extents[ei:], off, n, indexDisk, ramFed, next) {
			rb.flush()
			continue
		}
		// Not cleared: every block whose bytes are used is read first
		// (readBlocks zero-fills past the target's end), and clearing the
		// whole chunk cost a tracked epoch a pass over all of RAM.
		data := buf[:n]
		// Read only the blocks the extents say nothing of, in runs: holes,
		// zero-allocated and unchanged ranges cost nothing.
		known := make([]blockKnowledge, (n+bs-1)/bs)
		knownAt := func(b int64) blockKnowledge {
			if ei >= len(extents) {
				return unknownBlock
			}
			lo, hi := off+b, min(off+b+bs, off+n)
			if coveredBy(extents[ei:], lo, hi, isZero) {
				return zeroBlock
			}
			if t.Prev != nil && coveredBy(extents[ei:], lo, hi, isUnchanged) {
				return unchangedBlock
			}
			return unknownBlock
		}
		if !allZero {
			for b := int64(0); b < n; {
				if k := knownAt(b); k != unknownBlock {
					known[b/bs] = k
					b += bs
					continue
				}
				e := b + bs
				for e < n && knownAt(e) == unknownBlock {
					e += bs
				}
				e = min(e, n)
				if err := readBlocks(t.Reader, data[b:e], off+b); err != nil {
					return nil, fmt.Errorf("read at %d: %w", off+b, err)
				}
				p.Scanned += e - b
				b = e
			}
		}
		for b := int64(0); b < n; b += bs {
			blk := data[b:min(b+bs, n)]
			i := (off + b) / bs
			var h uint64
			var zero bool
			switch {
			case allZero || known[b/bs] == zeroBlock:
				zero, h = true, blockhash.ZeroHash(len(blk))
			case known[b/bs] == unchangedBlock:
				h = t.Prev.Hashes[i]
				zero = h == blockhash.ZeroHash(len(blk))
			case blockhash.IsZero(blk):
				zero, h = true, blockhash.ZeroHash(len(blk))
			default:
				h = blockhash.Hash(blk)
			}
			next.Hashes[i] = h
			if indexDisk {
				switch {
				case zero:
					p.dd.zero(t.Name, off+b, int64(len(blk)))
				case known[b/bs] != unchangedBlock:
					p.dd.update(t.Name, off+b, blk)
				}
			}
			// Memory pages feed the RAM index as they are planned; ref says
			// the page is written by reference.
			ramDedup := ramIndexed && len(blk) == vmspec.PageSize
			planned := func(ref bool) {
				if ramDedup {
					p.dd.ramPage(int(id), off+b, h, zero, ref)
				}
			}
			bk := blockplan.Block{Hash: h, Zero: zero, OldKnown: old != nil, RAMPage: ramDedup}
			if old != nil {
				bk.Old = old.Hashes[i]
			}
			// Look references up (reading the page if its hash came from
			// the previous cut): a disk page first, then a memory page.
			var srcTarget uint16
			var srcOff int64
			if blockplan.Lookup(bk) {
				if known[b/bs] == unchangedBlock {
					if err := readBlocks(t.Reader, blk, off+b); err != nil {
						return nil, fmt.Errorf("read at %d: %w", off+b, err)
					}
				}
				if src, so, ok := p.dd.find(h, blk); ok {
					bk.DiskHit, srcTarget, srcOff = true, src, so
				} else if src, so, ok := p.dd.findRAM(int(id), off+b, h, blk); ok {
					bk.RAMHit, srcTarget, srcOff = true, uint16(src), so
				}
			}
			kind := blockplan.Decide(bk)
			if kind == blockplan.Unchanged {
				planned(false)
				rb.flush()
				continue
			}
			if t.Kind == vmspec.KindRAM && zero {
				p.RAMZeroPages++
			}
			switch kind {
			case blockplan.DiskRef:
				rb.ref(off+b, h, wire.RefDisk, srcTarget, srcOff)
				p.RAMRefPages++
				planned(true)
				continue
			case blockplan.RAMRef:
				rb.ref(off+b, h, wire.RefPage, srcTarget, srcOff)
				p.RAMRefPages++
				p.RAMDupPages++
				planned(true)
				continue
			}
			planned(false)
			if t.Kind == vmspec.KindRAM && !zero {
				p.RAMDataPages++
			}
			if known[b/bs] == unchangedBlock && !zero {
				// Unchanged since the previous cut but not what the replica
				// holds (an earlier epoch was never sent): read it now.
				if err := readBlocks(t.Reader, blk, off+b); err != nil {
					return nil, fmt.Errorf("read at %d: %w", off+b, err)
				}
				p.Scanned += int64(len(blk))
			}
			rb.block(off+b, blk, zero, h)
			if zero {
				p.Zeroed += int64(len(blk))
			} else {
				p.Changed += int64(len(blk))
			}
		}
	}
	rb.flush()
	if indexDisk {
		p.dd.scanned(t.Name)
	}
	if ramIndexed {
		p.dd.ramScanned(t.Name, next)
	}
	return next, nil
}

// keepChunks turns keepChunk on; tests compare plans made without it.
var keepChunks = true

// keepChunk plans the chunk at off (n bytes) of target id in one step
// when nothing in it can change: the source says every byte is as at the
// previous cut, whose table the replica holds for the chunk. Its entries
// are copied and each memory page is fed to the RAM index as unchanged,
// as the block-by-block loop would, unless ramFed says the index holds
// them already (it was fed t.Prev whole); a tracked epoch of a large
// guest has little else, and that loop cost it tens of nanoseconds per
// page of RAM. Disks fed to the content index take the loop.
func (p *Plan) keepChunk(id uint16, t Target, old *blockhash.Table, ext []Extent, off, n int64, indexDisk, ramFed bool, next *blockhash.Table) bool {
	if !keepChunks || t.Prev == nil || old == nil || indexDisk || !coveredBy(ext, off, off+n, isUnchanged) {
		return false
	}
	bs := int64(t.BlockSize)
	lo, hi := off/bs, (off+n+bs-1)/bs
	// Usually the very table (the replica committed the previous cut's
	// plan), which needs no comparing.
	if old != t.Prev && !slices.Equal(old.Hashes[lo:hi], t.Prev.Hashes[lo:hi]) {
		return false
	}
	copy(next.Hashes[lo:hi], t.Prev.Hashes[lo:hi])
	p.kept += n
	switch {
	case ramFed:
		p.dd.ramKept(int(id), off+n)
		p.keptIndexed += n
	case t.Kind == vmspec.KindRAM && p.dd != nil:
		// newPlan holds RAM targets to whole pages at page-sized blocks.
		zh := blockhash.ZeroHash(vmspec.PageSize)
		for i := lo; i < hi; i++ {
			p.dd.ramPage(int(id), i*bs, next.Hashes[i], next.Hashes[i] == zh, false)
		}
	}
	return true
}

type blockKnowledge uint8

const (
	unknownBlock   blockKnowledge = iota // read and hash it
	zeroBlock                            // reads as zeros
	unchangedBlock                       // hash from the previous cut
)

func isZero(e Extent) bool      { return e.Zero }
func isUnchanged(e Extent) bool { return e.Unchanged }

// coveredBy reports whether [lo, hi) lies entirely in extents with property ok.
func coveredBy(ext []Extent, lo, hi int64, ok func(Extent) bool) bool {
	pos := lo
	for _, e := range ext {
		if e.Off > pos {
			return false
		}
		if e.Off+e.Len <= pos {
			continue
		}
		if !ok(e) {
			return false
		}
		pos = e.Off + e.Len
		if pos >= hi {
			return true
		}
	}
	return false
}

// Frame reads item i from snap and returns it as a frame, checking that the
// data is what was planned.
func (p *Plan) Frame(snap *Snapshot, i int) (wire.Item, error) {
	it := p.item(i)
	seq := uint64(i)
	switch it.Type {
	case wire.TypeZeroRun:
		return &wire.ZeroRun{Seq: seq, Target: it.Target, Offset: uint64(it.Off), Length: uint64(it.Len)}, nil
	case wire.TypePageRef:
		// The replica copies these pages from its disk; check they still
		// are what was planned, like any data.
		t := snap.Targets[it.Target]
		data := blockBufs.Get(int(it.Len))
		defer blockBufs.Put(data)
		if err := readBlocks(t.Reader, data, it.Off); err != nil {
			return nil, fmt.Errorf("read %s at %d: %w", t.Name, it.Off, err)
		}
		for j, want := range it.Hashes {
			if blockhash.Hash(data[j*vmspec.PageSize:(j+1)*vmspec.PageSize]) != want {
				return nil, fmt.Errorf("%s page at %d: %w", t.Name, it.Off+int64(j*vmspec.PageSize), ErrSourceChanged)
			}
		}
		return &wire.PageRef{Seq: seq, Target: it.Target, Page: uint64(it.Off / vmspec.PageSize), Count: uint32(it.Len / vmspec.PageSize),
			Source: it.Source, SrcTarget: it.SrcTarget, SrcOffset: refSrcOffset(it)}, nil
	case wire.TypeDeviceState:
		return &wire.DeviceState{Seq: seq, Offset: uint64(it.Off), Total: uint64(len(snap.DeviceState)), Data: it.dev}, nil
	}
	t := snap.Targets[it.Target]
	data := blockBufs.Get(int(it.Len))
	// Zero-filled past the target's end, as planned (the buffer is reused).
	if err := readBlocks(t.Reader, data, it.Off); err != nil {
		blockBufs.Put(data)
		return nil, fmt.Errorf("read %s at %d: %w", t.Name, it.Off, err)
	}
	bs := t.BlockSize
	for j, want := range it.Hashes {
		blk := data[j*bs : min((j+1)*bs, len(data))]
		if blockhash.Hash(blk) != want {
			blockBufs.Put(data)
			return nil, fmt.Errorf("%s block at %d: %w", t.Name, it.Off+int64(j*bs), ErrSourceChanged)
		}
	}
	if it.Type == wire.TypeMemRun {
		return &wire.MemRun{Seq: seq, Target: it.Target, Page: uint64(it.Off) / vmspec.PageSize, Data: data}, nil
	}
	return &wire.DiskExtent{Seq: seq, Target: it.Target, Offset: uint64(it.Off), Data: data}, nil
}
