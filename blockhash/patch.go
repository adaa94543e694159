package blockhash

import (
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"
)

var patchMagic = [8]byte{'D', 'R', 'B', 'H', 'P', '1', 0, 0}

// Run is a run of consecutive entries of a table.
type Run struct {
	First  int64
	Hashes []uint64
}

// Patch is some entries of a table: what a store writes, instead of the
// whole table, when an epoch changed few of them (a RAM table is 2 MiB
// per GiB; an epoch changes a few thousand entries). Laid over the whole
// table it was taken against, it gives the table it was taken from.
type Patch struct {
	BlockSize int
	Size      int64
	Runs      []Run // ascending, not overlapping
}

// RunGap is how close two changed entries must be for RunsAt and DiffRuns
// to carry them, and the entries between, in one run: a run's header is
// 12 bytes, an entry 8, so scattered changes cost less joined.
const RunGap = 2

// RunsAt returns runs of t holding the entries idx (ascending, distinct,
// within t), joined across gaps of at most RunGap entries.
func RunsAt(t *Table, idx []int64) []Run {
	var runs []Run
	for i := 0; i < len(idx); {
		j := i + 1
		for j < len(idx) && idx[j] <= idx[j-1]+RunGap+1 {
			j++
		}
		runs = append(runs, Run{First: idx[i], Hashes: t.Hashes[idx[i] : idx[j-1]+1]})
		i = j
	}
	return runs
}

// DiffRuns returns runs of t holding every entry that differs from base
// (those past base's end included), joined across gaps of at most RunGap
// entries. The runs share t's entries.
func DiffRuns(base, t *Table) []Run {
	var runs []Run
	for i := 0; i < len(t.Hashes); {
		if i < len(base.Hashes) && t.Hashes[i] == base.Hashes[i] {
			i++
			continue
		}
		start, end := i, i+1
		for j := end; j < len(t.Hashes) && j < end+RunGap+1; j++ {
			if j >= len(base.Hashes) || t.Hashes[j] != base.Hashes[j] {
				end = j + 1
			}
		}
		runs = append(runs, Run{First: int64(start), Hashes: t.Hashes[start:end]})
		i = end
	}
	return runs
}

// AppendRuns appends the encoding of runs to b:
//
//	nruns u32 | nruns × (first u64 | count u32 | count × hash u64)
func AppendRuns(b []byte, runs []Run) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(runs)))
	for _, r := range runs {
		b = binary.BigEndian.AppendUint64(b, uint64(r.First))
		b = binary.BigEndian.AppendUint32(b, uint32(len(r.Hashes)))
		for _, h := range r.Hashes {
			b = binary.BigEndian.AppendUint64(b, h)
		}
	}
	return b
}

// ReadRuns parses runs that AppendRuns encoded at the start of b and
// returns the bytes after them. Runs must be non-empty, ascending and not
// overlapping, and end before entry 2^60; whether they fit a table is
// the caller's to check.
func ReadRuns(b []byte) ([]Run, []byte, error) {
	if len(b) < 4 {
		return nil, nil, fmt.Errorf("runs: truncated: %w", ErrCorrupt)
	}
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	// Each run takes at least 20 bytes, so a lying count allocates no
	// more than b holds.
	if uint64(n)*20 > uint64(len(b)) {
		return nil, nil, fmt.Errorf("%d runs in %d bytes: %w", n, len(b), ErrCorrupt)
	}
	runs := make([]Run, 0, n)
	next := uint64(0) // the first entry the next run may start at
	for k := range n {
		if len(b) < 12 {
			return nil, nil, fmt.Errorf("run %d: truncated: %w", k, ErrCorrupt)
		}
		first, count := binary.BigEndian.Uint64(b), uint64(binary.BigEndian.Uint32(b[8:]))
		b = b[12:]
		switch {
		case count == 0:
			return nil, nil, fmt.Errorf("run %d is empty: %w", k, ErrCorrupt)
		case first < next || first >= 1<<60:
			return nil, nil, fmt.Errorf("run %d at entry %d: out of order: %w", k, first, ErrCorrupt)
		case uint64(len(b)) < 8*count:
			return nil, nil, fmt.Errorf("run %d: truncated: %w", k, ErrCorrupt)
		}
		r := Run{First: int64(first), Hashes: make([]uint64, count)}
		for i := range r.Hashes {
			r.Hashes[i] = binary.BigEndian.Uint64(b[8*i:])
		}
		b = b[8*count:]
		runs = append(runs, r)
		next = first + count
	}
	return runs, b, nil
}

// PatchOf returns a patch of t holding the entries idx (ascending,
// distinct, within t), and the entries between those at most RunGap
// apart.
func PatchOf(t *Table, idx []int64) *Patch {
	return &Patch{BlockSize: t.BlockSize, Size: t.Size, Runs: RunsAt(t, idx)}
}

// Entries is the number of entries the patch holds.
func (p *Patch) Entries() int {
	n := 0
	for _, r := range p.Runs {
		n += len(r.Hashes)
	}
	return n
}

// Indices returns the entries' indices, ascending.
func (p *Patch) Indices() []int64 { return Indices(p.Runs) }

// Indices returns the indices of the entries runs hold, ascending.
func Indices(runs []Run) []int64 {
	var out []int64
	for _, r := range runs {
		for i := range r.Hashes {
			out = append(out, r.First+int64(i))
		}
	}
	return out
}

// Apply returns base with the patch's entries laid over it; base, which
// must describe a target of the patch's size and block size, is not
// changed.
func (p *Patch) Apply(base *Table) (*Table, error) {
	if base.Size != p.Size || base.BlockSize != p.BlockSize {
		return nil, fmt.Errorf("patch of a %d-byte target at block size %d laid over a table of %d bytes at %d: %w", p.Size, p.BlockSize, base.Size, base.BlockSize, ErrCorrupt)
	}
	t := base.Clone()
	for _, r := range p.Runs {
		copy(t.Hashes[r.First:], r.Hashes)
	}
	return t, nil
}

// Marshal encodes the patch (layout in doc.go).
func (p *Patch) Marshal() []byte {
	b := make([]byte, 0, 24+12*len(p.Runs)+8*p.Entries()+8)
	b = append(b, patchMagic[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(p.BlockSize))
	b = binary.BigEndian.AppendUint64(b, uint64(p.Size))
	b = AppendRuns(b, p.Runs)
	return binary.BigEndian.AppendUint64(b, xxhash.Sum64(b))
}

// ReadPatch parses an encoded patch, checking its checksum and that its
// runs are ascending, not overlapping, non-empty and within the target.
func ReadPatch(b []byte) (*Patch, error) {
	if len(b) < 32 {
		return nil, fmt.Errorf("patch of %d bytes: %w", len(b), ErrCorrupt)
	}
	body, sum := b[:len(b)-8], binary.BigEndian.Uint64(b[len(b)-8:])
	if [8]byte(body[:8]) != patchMagic {
		return nil, fmt.Errorf("bad patch magic %q: %w", body[:8], ErrCorrupt)
	}
	if got := xxhash.Sum64(body); got != sum {
		return nil, fmt.Errorf("patch checksum %016x, want %016x: %w", got, sum, ErrCorrupt)
	}
	bs := binary.BigEndian.Uint32(body[8:12])
	size := binary.BigEndian.Uint64(body[12:20])
	if bs < 512 || bs > 4<<20 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("patch block size %d: %w", bs, ErrCorrupt)
	}
	if size == 0 || size > 1<<60 || Blocks(int64(size), int(bs)) > MaxEntries {
		return nil, fmt.Errorf("patch of a %d-byte target at block size %d: %w", size, bs, ErrCorrupt)
	}
	runs, rest, err := ReadRuns(body[20:])
	if err != nil {
		return nil, fmt.Errorf("patch: %w", err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("patch has %d bytes after its runs: %w", len(rest), ErrCorrupt)
	}
	blocks := Blocks(int64(size), int(bs))
	if len(runs) > 0 {
		if last := runs[len(runs)-1]; last.First+int64(len(last.Hashes)) > blocks {
			return nil, fmt.Errorf("patch runs end past the target's %d entries: %w", blocks, ErrCorrupt)
		}
	}
	return &Patch{BlockSize: int(bs), Size: int64(size), Runs: runs}, nil
}
