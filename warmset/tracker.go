package warmset

import (
	"errors"
	"slices"
)

// PageSize is the unit of tracking.
const PageSize = 4096

// Options tune a Tracker.
type Options struct {
	Boost     uint8 // score a write adds; default 64
	Threshold uint8 // score from which a page is hot; default 4
	// MaxBytes caps the hot set; 0 means a quarter of the RAM.
	MaxBytes int64
}

// Tracker scores the pages of one RAM block.
type Tracker struct {
	o       Options
	scores  []uint8
	written []bool // this epoch
	epochs  uint64
}

// New returns a tracker for a block of size bytes.
func New(size int64, o Options) (*Tracker, error) {
	if size <= 0 || size%PageSize != 0 {
		return nil, errors.New("warmset: size must be a positive number of pages")
	}
	if o.Boost == 0 {
		o.Boost = 64
	}
	if o.Threshold == 0 {
		o.Threshold = 4
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = size / 4
	}
	n := size / PageSize
	return &Tracker{o: o, scores: make([]uint8, n), written: make([]bool, n)}, nil
}

// Pages is the block's size in pages.
func (t *Tracker) Pages() int64 { return int64(len(t.scores)) }

// Written records that pages [first, first+count) were written in the
// current epoch; ranges beyond the block are clipped.
func (t *Tracker) Written(first, count int64) {
	if first < 0 || count <= 0 || first >= int64(len(t.written)) {
		return
	}
	end := min(first+count, int64(len(t.written)))
	for p := first; p < end; p++ {
		t.written[p] = true
	}
}

// EndEpoch ages every score and adds the epoch's writes.
func (t *Tracker) EndEpoch() {
	for i, s := range t.scores {
		s -= s >> 1
		if t.written[i] {
			s = uint8(min(int(s)+int(t.o.Boost), 255))
			t.written[i] = false
		}
		t.scores[i] = s
	}
	t.epochs++
}

// Run is a range of pages.
type Run struct{ First, Count int64 }

// Hot returns the hot set as ascending, non-overlapping runs of at most
// MaxBytes: when more pages are hot, the highest scores win, and among
// pages of the cutoff score the lowest addresses.
func (t *Tracker) Hot() []Run {
	th := int(t.o.Threshold)
	limit := t.o.MaxBytes / PageSize
	var hist [256]int64
	for _, s := range t.scores {
		hist[s]++
	}
	// Every page scoring above cut is in; of those scoring cut, the first
	// room ones are.
	cut, above := th-1, int64(0)
	for s := 255; s >= th; s-- {
		if above+hist[s] > limit {
			cut = s
			break
		}
		above += hist[s]
	}
	room := limit - above
	var runs []Run
	for i, s := range t.scores {
		in := int(s) > cut
		if !in && int(s) == cut && cut >= th && room > 0 {
			in = true
			room--
		}
		if !in {
			continue
		}
		p := int64(i)
		if k := len(runs); k > 0 && runs[k-1].First+runs[k-1].Count == p {
			runs[k-1].Count++
			continue
		}
		runs = append(runs, Run{First: p, Count: 1})
	}
	return runs
}

// HotBytes is the size of Hot().
func HotBytes(runs []Run) int64 {
	var n int64
	for _, r := range runs {
		n += r.Count * PageSize
	}
	return n
}

// Diff returns the pages in a but not in b, as runs.
func Diff(a, b []Run) []Run {
	var out []Run
	in := func(p int64) bool {
		i, _ := slices.BinarySearchFunc(b, p, func(r Run, p int64) int {
			switch {
			case r.First+r.Count <= p:
				return -1
			case r.First > p:
				return 1
			}
			return 0
		})
		return i < len(b) && b[i].First <= p && p < b[i].First+b[i].Count
	}
	for _, r := range a {
		for p := r.First; p < r.First+r.Count; p++ {
			if in(p) {
				continue
			}
			if k := len(out); k > 0 && out[k-1].First+out[k-1].Count == p {
				out[k-1].Count++
			} else {
				out = append(out, Run{First: p, Count: 1})
			}
		}
	}
	return out
}
