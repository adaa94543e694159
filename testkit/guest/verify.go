package guest

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/drsync/drsync/testkit/guest/record"
)

// Records summarizes the record ring of a disk image.
type Records struct {
	Count       int    // valid records
	First, Last uint64 // their lowest and highest seq; 0 when Count is 0
	Slots       int    // slots in the ring
}

// VerifyRecords checks the record ring on a raw disk image of size bytes
// (convert a qcow2 image first). Every slot must be zero or hold a valid
// record that belongs in that slot, and the records must be exactly the
// ones the guest's sequential writer leaves behind at some instant: seqs
// First..Last with no hole, and, once the ring has wrapped, no empty slot
// (First == Last-Slots+1). An error names the first offending slot or the
// missing seqs. An image without records is valid, with Count 0.
func VerifyRecords(r io.ReaderAt, size int64) (Records, error) {
	slots := record.Slots(size)
	if slots == 0 {
		return Records{}, fmt.Errorf("verify records: a %d-byte image has no room for the ring at %d", size, record.RingStart)
	}
	res := Records{Slots: slots}
	seqs := make([]uint64, 0, slots)
	buf := make([]byte, 256*record.Size)
	err := record.Scan(r, size, buf, func(slot int, b []byte) error {
		rec, err := record.Decode(b)
		if errors.Is(err, record.ErrEmpty) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("verify records: slot %d (offset %#x): %w", slot, record.Offset(slot), err)
		}
		if want := record.SlotOf(rec.Seq, slots); want != slot {
			return fmt.Errorf("verify records: slot %d (offset %#x) holds seq %d, which belongs in slot %d", slot, record.Offset(slot), rec.Seq, want)
		}
		seqs = append(seqs, rec.Seq)
		return nil
	})
	if err != nil {
		return res, err
	}
	if len(seqs) == 0 {
		return res, nil
	}
	slices.Sort(seqs)
	res.Count, res.First, res.Last = len(seqs), seqs[0], seqs[len(seqs)-1]
	oldest := uint64(1)
	if res.Last > uint64(slots) {
		oldest = res.Last - uint64(slots) + 1
	}
	if res.First < oldest {
		// Its slot should have been overwritten by a newer seq.
		return res, fmt.Errorf("verify records: slot %d holds stale seq %d: the ring ends at seq %d, so the slot should hold seq %d",
			record.SlotOf(res.First, slots), res.First, res.Last, res.First+uint64(slots)*((oldest-res.First+uint64(slots)-1)/uint64(slots)))
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			// Each seq has one slot, so no seq appears twice: this is a hole.
			return res, fmt.Errorf("verify records: hole: seqs %d..%d missing between %d and %d (slots %d..%d); %d records in %d..%d",
				seqs[i-1]+1, seqs[i]-1, seqs[i-1], seqs[i], record.SlotOf(seqs[i-1]+1, slots), record.SlotOf(seqs[i]-1, slots), res.Count, res.First, res.Last)
		}
	}
	if res.First != oldest {
		return res, fmt.Errorf("verify records: seqs %d..%d are missing: the ring ends at %d, so slot %d should hold seq %d but is empty",
			oldest, res.First-1, res.Last, record.SlotOf(oldest, slots), oldest)
	}
	return res, nil
}

// MaxGap is the longest host-time gap between consecutive ticks around the
// window [from, to]: the ticks inside it, plus the last tick at or before
// from (or from itself when there is none) and the first tick at or after
// to (or to itself). A stall that straddles an edge of the window thus counts in
// full, and a guest that stopped ticking before to counts up to to. ticks
// must be in arrival order, as VM.Ticks returns them.
func MaxGap(ticks []Tick, from, to time.Time) time.Duration {
	prev := from
	var gap time.Duration
	for _, tk := range ticks {
		if !tk.At.After(from) {
			prev = tk.At
			continue
		}
		gap = max(gap, tk.At.Sub(prev))
		prev = tk.At
		if !tk.At.Before(to) {
			return gap
		}
	}
	return max(gap, to.Sub(prev))
}
