package pagecache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

// disks is a model of the replica's disk targets: plain byte slices. It is
// also the PageReader the index verifies through.
type disks struct {
	d     [][]byte
	fail  error // returned by ReadPage when set
	reads int
}

func newDisks(sizes ...int) *disks {
	m := &disks{}
	for _, n := range sizes {
		m.d = append(m.d, make([]byte, n))
	}
	return m
}

func (m *disks) ReadPage(loc Loc, buf []byte) error {
	m.reads++
	if m.fail != nil {
		return m.fail
	}
	if int(loc.Target) >= len(m.d) || loc.Off < 0 || loc.Off%PageSize != 0 || loc.Off+PageSize > int64(len(m.d[loc.Target])) {
		return fmt.Errorf("model: no page at %v", loc)
	}
	copy(buf, m.d[loc.Target][loc.Off:])
	return nil
}

func (m *disks) page(loc Loc) []byte {
	return m.d[loc.Target][loc.Off : loc.Off+PageSize]
}

func (m *disks) read(t uint16) func(off int64, buf []byte) error {
	return func(off int64, buf []byte) error {
		copy(buf, m.d[t][off:])
		return nil
	}
}

// pat is a non-zero page derived from seed.
func pat(seed uint64) []byte {
	p := make([]byte, PageSize)
	s := seed*0x9e3779b97f4a7c15 + 1
	for i := 0; i < PageSize; i += 8 {
		s ^= s << 13
		s ^= s >> 7
		s ^= s << 17
		binary.LittleEndian.PutUint64(p[i:], s)
	}
	return p
}

// weakHash collides often: 5 values.
func weakHash(p []byte) uint64 { return uint64(p[0]+p[1]) % 5 }

// constHash makes every page collide.
func constHash([]byte) uint64 { return 7 }

// check verifies the index's structure: every live entry is on its
// location chain and in the ring of its hash's group, heads are exactly
// the entries on hash chains, counts and the bound hold, and the free list
// holds the rest of the slab.
func (x *Index) check() error {
	if x.live > x.max || int(x.used) > x.max || x.live < 0 {
		return fmt.Errorf("live %d used %d max %d", x.live, x.used, x.max)
	}
	if len(x.hb) > x.nbMax || len(x.hb) != len(x.lb) {
		return fmt.Errorf("buckets %d/%d, max %d", len(x.hb), len(x.lb), x.nbMax)
	}
	free := 0
	for i := x.free; i != none; i = x.ent(i).bnext {
		if x.ent(i).flags != 0 {
			return fmt.Errorf("free slot %d has flags %x", i, x.ent(i).flags)
		}
		if free++; free > int(x.used) {
			return errors.New("free list loops")
		}
	}
	live, heads := 0, 0
	for i := int32(0); i < x.used; i++ {
		e := x.ent(i)
		if e.flags&fLive == 0 {
			continue
		}
		live++
		if j := x.locFind(e.tgt, e.page); j != i {
			return fmt.Errorf("entry %d (t%d p%d): location chain finds %d", i, e.tgt, e.page, j)
		}
		g := x.group(e.hash)
		if g == none {
			return fmt.Errorf("entry %d: no group for hash %x", i, e.hash)
		}
		if e.flags&fHead != 0 {
			heads++
			if g != i {
				return fmt.Errorf("entry %d is a head but group of %x is %d", i, e.hash, g)
			}
		}
		in := false
		n := 0
		for j := g; ; {
			f := x.ent(j)
			if f.hash != e.hash || f.flags&fLive == 0 || x.ent(f.dnext).dprev != j {
				return fmt.Errorf("ring of %x broken at %d", e.hash, j)
			}
			if j != g && f.flags&fHead != 0 {
				return fmt.Errorf("ring of %x has a second head %d", e.hash, j)
			}
			in = in || j == i
			if j = f.dnext; j == g {
				break
			}
			if n++; n > x.live {
				return fmt.Errorf("ring of %x loops", e.hash)
			}
		}
		if !in {
			return fmt.Errorf("entry %d not in the ring of %x", i, e.hash)
		}
	}
	if live != x.live || live+free != int(x.used) {
		return fmt.Errorf("live %d counted %d, free %d, used %d", x.live, live, free, x.used)
	}
	onChains := 0
	for b, i := range x.hb {
		for ; i != none; i = x.ent(i).bnext {
			e := x.ent(i)
			if e.flags&(fLive|fHead) != fLive|fHead || x.hbucket(e.hash) != uint64(b) {
				return fmt.Errorf("hash bucket %d holds %d (flags %x)", b, i, e.flags)
			}
			if onChains++; onChains > x.live {
				return errors.New("hash chains loop")
			}
		}
	}
	if onChains != heads {
		return fmt.Errorf("%d heads, %d on hash chains", heads, onChains)
	}
	onChains = 0
	for b, i := range x.lb {
		for ; i != none; i = x.ent(i).lnext {
			e := x.ent(i)
			if e.flags&fLive == 0 || x.lbucket(e.tgt, e.page) != uint64(b) {
				return fmt.Errorf("location bucket %d holds %d", b, i)
			}
			if onChains++; onChains > x.live {
				return errors.New("location chains loop")
			}
		}
	}
	if onChains != x.live {
		return fmt.Errorf("%d live, %d on location chains", x.live, onChains)
	}
	return nil
}

// exact verifies that every entry names a page of m whose content has the
// entry's hash and is not zero: invalidation missed nothing.
func (x *Index) exact(m *disks) error {
	for i := int32(0); i < x.used; i++ {
		e := x.ent(i)
		if e.flags&fLive == 0 {
			continue
		}
		loc := Loc{Target: e.tgt, Off: int64(e.page) * PageSize}
		if int(e.tgt) >= len(m.d) || loc.Off+PageSize > int64(len(m.d[e.tgt])) {
			return fmt.Errorf("entry %d names %v, outside the model", i, loc)
		}
		p := m.page(loc)
		if bytes.Equal(p, zeroPage[:]) {
			return fmt.Errorf("entry %d names zero page %v", i, loc)
		}
		if h := x.hash(p); h != e.hash {
			return fmt.Errorf("entry %d names %v with hash %x, content there hashes to %x", i, loc, e.hash, h)
		}
	}
	return nil
}

func mustCheck(tb testing.TB, x *Index, m *disks) {
	tb.Helper()
	if err := x.check(); err != nil {
		tb.Fatal("structure: ", err)
	}
	if m != nil {
		if err := x.exact(m); err != nil {
			tb.Fatal("exactness: ", err)
		}
	}
}
