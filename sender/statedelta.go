package sender

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"sort"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/wire"
)

// An index delta is one epoch's change to the sender's index: the entries
// of each table that differ from the index it was taken against (its
// base), so that recording an epoch costs what the epoch changed, not 8
// bytes per page of every target. Its base and result are named by epoch
// and content (Index.ComputeStateID): one applied to any other index is
// refused, never merged into it.
//
//	"DRSNDDL1" | baseEpoch u64 | baseID u64 | epoch u64 | id u64 | n u16 |
//	    n x (keyLen u8 | key | mode u8 | body) | xxh64 u64
//
// mode 0 (whole): body is the table file (blockhash's layout), for a
// table new in the epoch or whose block size changed; mode 1 (runs): body
// is size u64 | runs u32 | runs x (first u64 | count u32 | count x hash
// u64), the table's new size and its changed entries in runs. A table of
// the base that the list leaves out is gone from the result. Integers are
// big-endian; the xxhash covers everything before it.
const deltaMagic = "DRSNDDL1"

const (
	deltaWhole = 0
	deltaRuns  = 1
)

// maxRunGap: entries this close to a run join it, so that scattered
// changes do not cost a run header each.
const maxRunGap = 2

type indexDelta struct {
	baseEpoch, baseID uint64
	epoch, id         uint64
	tables            []tableDelta // sorted by key
}

type tableDelta struct {
	key   string
	whole *blockhash.Table // mode 0
	size  int64            // mode 1
	runs  []hashRun
}

type hashRun struct {
	first  int64
	hashes []uint64
}

// diffIndex is x as a delta against base.
func diffIndex(base, x *Index) *indexDelta {
	d := &indexDelta{baseEpoch: base.Epoch, baseID: stateID(base), epoch: x.Epoch, id: stateID(x)}
	keys := make([]string, 0, len(x.Tables))
	for k := range x.Tables {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t, b := x.Tables[k], base.Tables[k]
		if b == nil || b.BlockSize != t.BlockSize {
			d.tables = append(d.tables, tableDelta{key: k, whole: t})
			continue
		}
		td := tableDelta{key: k, size: t.Size}
		for i := 0; i < len(t.Hashes); {
			if i < len(b.Hashes) && t.Hashes[i] == b.Hashes[i] {
				i++
				continue
			}
			start, end := i, i+1
			for j := end; j < len(t.Hashes) && j < end+maxRunGap+1; j++ {
				if j >= len(b.Hashes) || t.Hashes[j] != b.Hashes[j] {
					end = j + 1
				}
			}
			td.runs = append(td.runs, hashRun{first: int64(start), hashes: t.Hashes[start:end]})
			i = end
		}
		d.tables = append(d.tables, td)
	}
	return d
}

// stateID is x's state identity: the recorded one (an index the planner
// or a load made always records it), or computed. A recorded one that
// does not match the tables is caught when the delta is applied.
func stateID(x *Index) uint64 {
	if x.StateID != 0 {
		return x.StateID
	}
	return x.ComputeStateID()
}

// entries counts the table entries d carries.
func (d *indexDelta) entries() int64 {
	var n int64
	for _, t := range d.tables {
		if t.whole != nil {
			n += int64(len(t.whole.Hashes))
		}
		for _, r := range t.runs {
			n += int64(len(r.hashes))
		}
	}
	return n
}

func (d *indexDelta) marshal() []byte {
	b := append([]byte(nil), deltaMagic...)
	for _, v := range []uint64{d.baseEpoch, d.baseID, d.epoch, d.id} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(d.tables)))
	for _, t := range d.tables {
		b = append(b, byte(len(t.key)))
		b = append(b, t.key...)
		if t.whole != nil {
			b = append(b, deltaWhole)
			b = t.whole.AppendMarshal(b)
			continue
		}
		b = append(b, deltaRuns)
		b = binary.BigEndian.AppendUint64(b, uint64(t.size))
		b = binary.BigEndian.AppendUint32(b, uint32(len(t.runs)))
		for _, r := range t.runs {
			b = binary.BigEndian.AppendUint64(b, uint64(r.first))
			b = binary.BigEndian.AppendUint32(b, uint32(len(r.hashes)))
			for _, h := range r.hashes {
				b = binary.BigEndian.AppendUint64(b, h)
			}
		}
	}
	return binary.BigEndian.AppendUint64(b, xxhash.Sum64(b))
}

// isDelta says whether a state file holds a delta rather than a whole
// index.
func isDelta(b []byte) bool { return bytes.HasPrefix(b, []byte(deltaMagic)) }

func unmarshalDelta(b []byte) (*indexDelta, error) {
	bad := func(what string) error { return fmt.Errorf("sender state delta: %s: %w", what, ErrCorruptState) }
	const head = len(deltaMagic) + 4*8 + 2
	if len(b) < head+8 || !isDelta(b) {
		return nil, bad("bad header")
	}
	body, sum := b[:len(b)-8], binary.BigEndian.Uint64(b[len(b)-8:])
	if xxhash.Sum64(body) != sum {
		return nil, bad("checksum mismatch")
	}
	u := func(i int) uint64 { return binary.BigEndian.Uint64(body[len(deltaMagic)+8*i:]) }
	d := &indexDelta{baseEpoch: u(0), baseID: u(1), epoch: u(2), id: u(3)}
	n := int(binary.BigEndian.Uint16(body[head-2:]))
	if n > wire.MaxTargets {
		return nil, bad("too many targets")
	}
	r := bytes.NewReader(body[head:])
	var scratch [12]byte
	for range n {
		k, problem := readTableKey(r)
		if problem != "" {
			return nil, bad(problem)
		}
		td := tableDelta{key: k}
		mode, err := r.ReadByte()
		switch {
		case err != nil:
			return nil, bad("truncated")
		case mode == deltaWhole:
			if td.whole, err = blockhash.Read(r); err != nil {
				return nil, bad(err.Error())
			}
		case mode == deltaRuns:
			if _, err := io.ReadFull(r, scratch[:12]); err != nil {
				return nil, bad("truncated table")
			}
			td.size = int64(binary.BigEndian.Uint64(scratch[:8]))
			runs := binary.BigEndian.Uint32(scratch[8:12])
			if td.size < 0 || uint64(runs) > uint64(r.Len())/12 {
				return nil, bad("bad table size or run count")
			}
			for range runs {
				if _, err := io.ReadFull(r, scratch[:12]); err != nil {
					return nil, bad("truncated run")
				}
				first, count := int64(binary.BigEndian.Uint64(scratch[:8])), binary.BigEndian.Uint32(scratch[8:12])
				if first < 0 || count == 0 || uint64(count) > uint64(r.Len())/8 {
					return nil, bad("bad run")
				}
				hr := hashRun{first: first, hashes: make([]uint64, count)}
				for i := range hr.hashes {
					io.ReadFull(r, scratch[:8]) // the length was checked
					hr.hashes[i] = binary.BigEndian.Uint64(scratch[:8])
				}
				td.runs = append(td.runs, hr)
			}
		default:
			return nil, bad(fmt.Sprintf("table mode %d", mode))
		}
		d.tables = append(d.tables, td)
	}
	if r.Len() != 0 {
		return nil, bad("trailing bytes")
	}
	return d, nil
}

// apply is base with d applied, base untouched. It refuses a base other
// than d's (by epoch and content) and a result other than d's.
func (d *indexDelta) apply(base *Index) (*Index, error) {
	if base == nil || base.Epoch != d.baseEpoch || base.ComputeStateID() != d.baseID {
		have := "none"
		if base != nil {
			have = fmt.Sprintf("epoch %d", base.Epoch)
		}
		return nil, fmt.Errorf("sender state delta of epoch %d is against epoch %d, not the index it follows (%s): %w", d.epoch, d.baseEpoch, have, ErrCorruptState)
	}
	x := &Index{Epoch: d.epoch, StateID: d.id, Tables: make(map[string]*blockhash.Table, len(d.tables))}
	for _, td := range d.tables {
		if td.whole != nil {
			x.Tables[td.key] = td.whole
			continue
		}
		b := base.Tables[td.key]
		if b == nil {
			return nil, fmt.Errorf("sender state delta of epoch %d changes %s, which its base lacks: %w", d.epoch, td.key, ErrCorruptState)
		}
		if td.size > 1<<60 || blockhash.Blocks(td.size, b.BlockSize) > blockhash.MaxEntries {
			return nil, fmt.Errorf("sender state delta of epoch %d: %s of %d bytes: %w", d.epoch, td.key, td.size, ErrCorruptState)
		}
		t := b
		if len(td.runs) > 0 || td.size != b.Size {
			t = b.Clone()
			t.Resize(td.size)
		}
		for _, r := range td.runs {
			if r.first+int64(len(r.hashes)) > int64(len(t.Hashes)) {
				return nil, fmt.Errorf("sender state delta of epoch %d: a run of %s ends beyond its %d entries: %w", d.epoch, td.key, len(t.Hashes), ErrCorruptState)
			}
			copy(t.Hashes[r.first:], r.hashes)
		}
		x.Tables[td.key] = t
	}
	if x.ComputeStateID() != d.id {
		return nil, fmt.Errorf("sender state delta of epoch %d does not give the index it recorded: %w", d.epoch, ErrCorruptState)
	}
	return x, nil
}
