package wire

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/vmspec"
)

// Summary is the fixed-size description of one epoch item: everything about
// it but its data, which is represented by DataHash. Both peers reduce each
// item to a Summary; the epoch digest and the plan identity are hashes over
// summaries, so they can be recomputed from a journal or a plan without
// holding item data in memory.
type Summary struct {
	Seq       uint64
	Type      Type
	Target    uint16
	Offset    uint64 // DiskExtent/ZeroRun: byte offset; MemRun/PageRef: page; DeviceState: blob offset
	Length    uint64 // bytes of data or zeros; PageRef: page count
	Source    RefSource
	SrcTarget uint16
	SrcOffset uint64
	DataHash  uint64 // xxhash64 of the item's data, 0 for items without data
}

// Summarize describes it. dataHash must be xxhash64 of the item's data (it is
// passed in because callers have usually computed it already).
func Summarize(it Item, dataHash uint64) Summary {
	s := Summary{Seq: it.ItemSeq(), Type: it.Type(), DataHash: dataHash}
	switch f := it.(type) {
	case *DiskExtent:
		s.Target, s.Offset, s.Length = f.Target, f.Offset, uint64(len(f.Data))
	case *MemRun:
		s.Target, s.Offset, s.Length = f.Target, f.Page, uint64(len(f.Data))
	case *ZeroRun:
		s.Target, s.Offset, s.Length, s.DataHash = f.Target, f.Offset, f.Length, 0
	case *PageRef:
		s.Target, s.Offset, s.Length, s.DataHash = f.Target, f.Page, uint64(f.Count), 0
		s.Source, s.SrcTarget, s.SrcOffset = f.Source, f.SrcTarget, f.SrcOffset
	case *DeviceState:
		s.Offset, s.Length = f.Offset, uint64(len(f.Data))
	}
	return s
}

// DataOf returns the data a frame carries, nil if none.
func DataOf(f Frame) []byte {
	switch f := f.(type) {
	case *DiskExtent:
		return f.Data
	case *MemRun:
		return f.Data
	case *DeviceState:
		return f.Data
	}
	return nil
}

const summaryLen = 8 + 1 + 2 + 8 + 8 + 1 + 2 + 8 + 8

func (s Summary) appendTo(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, s.Seq)
	b = append(b, byte(s.Type))
	b = binary.BigEndian.AppendUint16(b, s.Target)
	b = binary.BigEndian.AppendUint64(b, s.Offset)
	b = binary.BigEndian.AppendUint64(b, s.Length)
	b = append(b, byte(s.Source))
	b = binary.BigEndian.AppendUint16(b, s.SrcTarget)
	b = binary.BigEndian.AppendUint64(b, s.SrcOffset)
	return binary.BigEndian.AppendUint64(b, s.DataHash)
}

// EpochDigest accumulates the digest an EpochCommit carries: xxhash64 over
// the epoch number and the summaries of all items in sequence order.
type EpochDigest struct {
	h   *xxhash.Digest
	buf []byte
}

// NewEpochDigest starts the digest of epoch.
func NewEpochDigest(epoch uint64) *EpochDigest {
	d := &EpochDigest{h: xxhash.New(), buf: make([]byte, 0, summaryLen)}
	d.buf = binary.BigEndian.AppendUint64(d.buf[:0], epoch)
	d.h.Write(d.buf)
	return d
}

// Add folds in the next item's summary.
func (d *EpochDigest) Add(s Summary) {
	d.buf = s.appendTo(d.buf[:0])
	d.h.Write(d.buf)
}

// Sum returns the digest of what was added so far.
func (d *EpochDigest) Sum() uint64 { return d.h.Sum64() }

// PlanID identifies an epoch's content: the epoch number, its targets and
// the summaries of all its items. A sender that computes the same plan twice
// (same source content, same replica state) gets the same PlanID, which is
// what lets it resume a staged epoch after a restart of either side.
func PlanID(epoch uint64, targets []Target, items []Summary) uint64 {
	h := xxhash.New()
	var b []byte
	b = binary.BigEndian.AppendUint64(b, epoch)
	for _, t := range targets {
		b = binary.BigEndian.AppendUint16(b, t.ID)
		b = append(b, byte(t.Kind), byte(len(t.Name)))
		b = append(b, t.Name...)
		b = binary.BigEndian.AppendUint64(b, t.Size)
		b = binary.BigEndian.AppendUint32(b, t.BlockSize)
	}
	h.Write(b)
	for _, s := range items {
		b = s.appendTo(b[:0])
		h.Write(b)
	}
	return h.Sum64()
}

// OpenPlanID identifies the first items of an open epoch (version 4): the
// epoch digest of their summaries. An open EpochBegin carries the one of
// the items before its StartSeq as its plan, and a receiver staging an
// open epoch reports the one of its durable items as Welcome's
// stagedPlan: a sender resumes a staged open epoch only if those items
// are its own plan's first, whichever process began it. The epoch's
// group tag is folded in (GroupPlanID): a staged epoch is never resumed
// under another tag.
func OpenPlanID(epoch uint64, g *vmspec.GroupCut, items []Summary) uint64 {
	d := NewEpochDigest(epoch)
	for _, s := range items {
		d.Add(s)
	}
	return GroupPlanID(d.Sum(), g)
}

// GroupPlanID folds an epoch's consistency-group tag into its plan
// identity: the same content cut at another group cut is another plan, so
// that a sender never resumes an epoch staged under one tag with another
// (the receiver would refuse the resume). An untagged plan keeps its id.
func GroupPlanID(id uint64, g *vmspec.GroupCut) uint64 {
	if g == nil {
		return id
	}
	b := binary.BigEndian.AppendUint64(nil, id)
	b = append(b, byte(len(g.Group)))
	b = append(b, g.Group...)
	b = binary.BigEndian.AppendUint64(b, g.Cut)
	for _, m := range g.Members {
		b = append(b, byte(len(m)))
		b = append(b, m...)
	}
	return xxhash.Sum64(b)
}
