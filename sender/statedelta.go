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
// u64), the table's new size and its changed entries in runs
// (blockhash.AppendRuns, joined across gaps of blockhash.RunGap). A table of
// the base that the list leaves out is gone from the result. Integers are
// big-endian; the xxhash covers everything before it.
const deltaMagic = "DRSNDDL1"

const (
	deltaWhole = 0
	deltaRuns  = 1
)

type indexDelta struct {
	baseEpoch, baseID uint64
	epoch, id         uint64
	tables            []tableDelta // sorted by key
}

type tableDelta struct {
	key   string
	whole *blockhash.Table // mode 0
	size  int64            // mode 1
	runs  []blockhash.Run  // mode 1, blockhash's run layout
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
		d.tables = append(d.tables, tableDelta{key: k, size: t.Size, runs: blockhash.DiffRuns(b, t)})
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
			n += int64(len(r.Hashes))
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
		b = blockhash.AppendRuns(b, t.runs)
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
	var scratch [8]byte
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
			if _, err := io.ReadFull(r, scratch[:8]); err != nil {
				return nil, bad("truncated table")
			}
			if td.size = int64(binary.BigEndian.Uint64(scratch[:8])); td.size < 0 {
				return nil, bad("bad table size")
			}
			runs, rest, err := blockhash.ReadRuns(body[len(body)-r.Len():])
			if err != nil {
				return nil, bad(err.Error())
			}
			td.runs = runs
			r.Reset(rest)
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
			if r.First+int64(len(r.Hashes)) > int64(len(t.Hashes)) {
				return nil, fmt.Errorf("sender state delta of epoch %d: a run of %s ends beyond its %d entries: %w", d.epoch, td.key, len(t.Hashes), ErrCorruptState)
			}
			copy(t.Hashes[r.First:], r.Hashes)
		}
		x.Tables[td.key] = t
	}
	if x.ComputeStateID() != d.id {
		return nil, fmt.Errorf("sender state delta of epoch %d does not give the index it recorded: %w", d.epoch, ErrCorruptState)
	}
	return x, nil
}
