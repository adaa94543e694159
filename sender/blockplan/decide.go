// Package blockplan holds the sender's per-block planning decisions,
// without IO: what a block of a disk or RAM target becomes in an epoch
// (nothing, part of a zero run, data, or a reference to a disk page or to
// another memory page the replica holds) and when consecutive blocks
// travel as one item. The planner (sender's scanTarget) reads and hashes
// the blocks, looks references up, and asks these functions what to do.
package blockplan

import "github.com/drsync/drsync/wire"

// Kind is what a block becomes in an epoch.
type Kind uint8

const (
	Unchanged Kind = iota // the replica holds it already: nothing travels
	Zero                  // part of a zero run: no payload
	Data                  // its bytes travel
	DiskRef               // a reference to a disk page of the same cut that holds its bytes
	RAMRef                // a reference to another memory page that holds its bytes
)

func (k Kind) String() string {
	return [...]string{"unchanged", "zero", "data", "disk-ref", "ram-ref"}[k]
}

// Block is what the planner knows of one block.
type Block struct {
	Hash uint64 // its content hash at the cut
	Zero bool   // it reads as zeros
	// OldKnown says whether the replica's content of the block is known,
	// and Old is then its hash.
	OldKnown bool
	Old      uint64
	// RAMPage says the block is a whole memory page and dedup is on: it
	// may travel as a reference.
	RAMPage bool
	// DiskHit and RAMHit say a disk page of the same cut, or a memory page
	// the replica reads as the snapshot has it, was found holding the
	// same bytes (checked byte for byte). They are asked for only when
	// Lookup says so.
	DiskHit, RAMHit bool
}

// Changed reports whether the replica needs the block in this epoch: its
// content there is unknown or differs.
func Changed(b Block) bool { return !b.OldKnown || b.Old != b.Hash }

// Lookup reports whether references should be looked for: a changed
// memory page with data (a zero page travels as a zero run, cheaper than
// any reference).
func Lookup(b Block) bool { return b.RAMPage && !b.Zero && Changed(b) }

// Decide says what the block becomes. A disk page is preferred to a memory
// page as a reference's source: the replica's disks are written before any
// reference is resolved, so it is always a valid source.
func Decide(b Block) Kind {
	switch {
	case !Changed(b):
		return Unchanged
	case b.Zero:
		return Zero
	case Lookup(b) && b.DiskHit:
		return DiskRef
	case Lookup(b) && b.RAMHit:
		return RAMRef
	}
	return Data
}

// Run is an item being built from consecutive blocks: its type, the bytes
// of the target it covers and, for a reference, where it copies from.
type Run struct {
	Type      wire.Type
	Off, Len  int64
	Source    wire.RefSource // PageRef only
	SrcTarget uint16
	SrcOff    int64 // byte offset of the source pages
}

// Extends reports whether block (a run of one block) may join run cur
// instead of starting an item of its own: same type, contiguous, for a
// reference also contiguous in the same source, and the item stays within
// wire.MaxData (zero runs carry no payload and have no bound).
func Extends(cur, block Run) bool {
	if cur.Type != block.Type || cur.Off+cur.Len != block.Off {
		return false
	}
	if cur.Type == wire.TypePageRef && (cur.Source != block.Source || cur.SrcTarget != block.SrcTarget || cur.SrcOff+cur.Len != block.SrcOff) {
		return false
	}
	return cur.Type == wire.TypeZeroRun || cur.Len+block.Len <= wire.MaxData
}
