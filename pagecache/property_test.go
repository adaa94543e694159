package pagecache

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// choices is where an operation sequence comes from: a seeded generator
// (the property test) or fuzz input.
type choices interface {
	n(k int) int // a choice in [0, k); k ≥ 1
}

type randChoices struct{ r *rand.Rand }

func (c randChoices) n(k int) int { return c.r.IntN(k) }

// byteChoices reads choices from fuzz input; once it is used up every
// choice is 0 and done is set.
type byteChoices struct {
	b    []byte
	done bool
}

func (c *byteChoices) n(k int) int {
	if k <= 1 {
		return 0
	}
	var v int
	switch {
	case len(c.b) == 0:
		c.done = true
		return 0
	case k <= 256:
		v, c.b = int(c.b[0]), c.b[1:]
	case len(c.b) >= 2:
		v, c.b = int(binary.LittleEndian.Uint16(c.b)), c.b[2:]
	default:
		v, c.b = int(c.b[0]), c.b[1:]
	}
	return v % k
}

// modelRun drives an index and a model disk set through random operations
// and checks the invariants after each.
type modelRun struct {
	tb     testing.TB
	x      *Index
	m      *disks
	pool   [][]byte // contents pages are drawn from, so that they repeat
	fresh  uint64
	silent bool // some changes are not reported: the index may be stale
	// complete: nothing keeps a page out of the index but zero content
	// (no eviction, no copy limit, enough probes for every collision).
	complete bool
	// unknown: pages only partly covered by an unaligned write or zero
	// since they were last written whole. The index drops them (it does
	// not know their other bytes), so completeness does not cover them.
	unknown map[Loc]bool
}

// touch records a change of [off, off+n) of target t in unknown.
func (r *modelRun) touch(t uint16, off, n int) {
	for p := off / PageSize * PageSize; p < off+n; p += PageSize {
		r.unknown[Loc{t, int64(p)}] = p < off || p+PageSize > off+n
	}
}

func newModelRun(tb testing.TB, o Options, complete, silent bool, sizes ...int) *modelRun {
	x, err := New(o)
	if err != nil {
		tb.Fatal(err)
	}
	r := &modelRun{tb: tb, x: x, m: newDisks(sizes...), complete: complete, silent: silent, unknown: map[Loc]bool{}}
	for i := range 10 {
		r.pool = append(r.pool, pat(uint64(1000+i)))
	}
	return r
}

// content picks a page: zero, from the pool, fresh, a copy of a model
// page, or a pool page with one byte changed.
func (r *modelRun) content(c choices) []byte {
	switch v := c.n(14); {
	case v == 0:
		return make([]byte, PageSize)
	case v <= 10:
		return r.pool[v-1]
	case v == 11:
		r.fresh++
		return pat(1<<40 + r.fresh)
	case v == 12:
		t := c.n(len(r.m.d))
		np := len(r.m.d[t]) / PageSize
		return bytes.Clone(r.m.page(L(uint16(t), int64(c.n(np)))))
	default:
		p := bytes.Clone(r.pool[c.n(len(r.pool))])
		p[c.n(PageSize)] ^= byte(1 + c.n(255))
		return p
	}
}

// step applies one random operation to both the model and the index.
func (r *modelRun) step(c choices) {
	t := uint16(c.n(len(r.m.d)))
	d := r.m.d[t]
	size := len(d)
	np := size / PageSize
	switch k := c.n(13); {
	case k <= 4: // aligned update of whole pages
		first := c.n(np)
		cnt := 1 + c.n(min(8, np-first))
		var data []byte
		for range cnt {
			data = append(data, r.content(c)...)
		}
		copy(d[first*PageSize:], data)
		r.touch(t, first*PageSize, len(data))
		r.x.Update(t, int64(first)*PageSize, data)
	case k == 5: // unaligned update, 512-byte sectors
		off := c.n(size/512) * 512
		n := min((1+c.n(24))*512, size-off)
		src := r.content(c)
		data := make([]byte, n)
		for i := 0; i < n; i += PageSize {
			copy(data[i:], src)
		}
		copy(d[off:], data)
		r.touch(t, off, n)
		r.x.Update(t, int64(off), data)
	case k == 6, k == 7: // zero an arbitrary byte range
		off := c.n(size)
		n := 1 + c.n(size-off)
		clear(d[off : off+n])
		r.touch(t, off, n)
		r.x.Zero(t, int64(off), int64(n))
	case k == 8: // rebuild the target from its content
		if err := r.x.LoadTarget(t, int64(size), r.m.read(t)); err != nil {
			r.tb.Fatal(err)
		}
		r.touch(t, 0, size)
	case k == 9: // the short tail of a target, and the page before it
		off := max(0, np-1) * PageSize
		data := append(bytes.Clone(r.content(c)), r.content(c)...)[:size-off]
		copy(d[off:], data)
		r.touch(t, off, len(data))
		r.x.Update(t, int64(off), data)
	case k == 10: // a whole-target zero, larger than the slab
		if c.n(4) == 0 {
			clear(d)
			r.touch(t, 0, size)
			r.x.Zero(t, 0, 1<<40)
		}
	case k == 11: // one whole page whose hash the caller knows
		pg := c.n(np)
		p := r.content(c)
		copy(d[pg*PageSize:], p)
		r.touch(t, pg*PageSize, PageSize)
		if bytes.Equal(p, zeroPage[:]) {
			r.x.Zero(t, int64(pg)*PageSize, PageSize)
		} else {
			r.x.SetPage(t, int64(pg)*PageSize, r.x.Hash(p))
		}
	default: // a change the index is not told of
		if r.silent {
			p := c.n(np)
			copy(d[p*PageSize:], r.content(c))
		}
	}
}

// verify checks the invariants: a sound structure within the bound, no
// entry for content that is gone (unless changes went unreported), Find
// never returning a location whose bytes differ, and, when the index is
// complete, every non-zero page of the model found.
func (r *modelRun) verify(c choices) {
	x, m := r.x, r.m
	if err := x.check(); err != nil {
		r.tb.Fatal("structure: ", err)
	}
	if x.Len() > x.max {
		r.tb.Fatalf("Len %d over MaxEntries %d", x.Len(), x.max)
	}
	if !r.silent {
		if err := x.exact(m); err != nil {
			r.tb.Fatal("exactness: ", err)
		}
	}
	st := x.Stats()
	complete := r.complete && !r.silent && st.Evicted == 0 && st.Skipped == 0
	find := func(p []byte) (Loc, bool) {
		loc, ok, err := x.Find(p, m)
		if err != nil {
			r.tb.Fatal(err)
		}
		if ok && !bytes.Equal(m.page(loc), p) {
			r.tb.Fatalf("Find returned %v whose bytes differ from the page", loc)
		}
		return loc, ok
	}
	for t, d := range m.d {
		for pg := 0; pg+PageSize <= len(d); pg += PageSize {
			p := bytes.Clone(d[pg : pg+PageSize])
			if _, ok := find(p); !ok && complete && !bytes.Equal(p, zeroPage[:]) && !r.unknown[L(uint16(t), int64(pg/PageSize))] {
				r.tb.Fatalf("page %v is on the model disk but not found (stats %+v)", L(uint16(t), int64(pg/PageSize)), st)
			}
		}
	}
	// A near miss of a pool page (found only if some disk holds exactly
	// it, which find has checked), and a fresh page, on no disk.
	near := bytes.Clone(r.pool[c.n(len(r.pool))])
	near[c.n(PageSize)] ^= 0x80
	find(near)
	r.fresh++
	if loc, ok := find(pat(1<<50 + r.fresh)); ok {
		r.tb.Fatalf("a page on no disk found at %v", loc)
	}
	if err := x.check(); err != nil {
		r.tb.Fatal("structure after Find: ", err)
	}
}

var propertyConfigs = []struct {
	name             string
	o                Options
	complete, silent bool
}{
	{"complete", Options{MaxEntries: 1024, MaxCopies: -1}, true, false},
	{"complete weak hash", Options{MaxEntries: 1024, MaxCopies: -1, MaxProbe: 1 << 20, Hash: weakHash}, true, false},
	{"one bucket", Options{MaxEntries: 1, Hash: constHash}, false, false},
	{"pressure", Options{MaxEntries: 8}, false, false},
	{"pressure weak hash", Options{MaxEntries: 12, MaxProbe: 3, MaxCopies: 3, Hash: weakHash}, false, false},
	{"copy limit", Options{MaxEntries: 1024, MaxCopies: 2}, false, false},
	{"unreported changes", Options{MaxEntries: 1024, MaxCopies: -1}, false, true},
	{"unreported changes weak hash", Options{MaxEntries: 16, MaxProbe: 2, Hash: weakHash}, false, true},
}

func TestModelProperty(t *testing.T) {
	steps := 500
	if testing.Short() {
		steps = 300
	}
	for _, cfg := range propertyConfigs {
		for seed := range uint64(4) {
			r := newModelRun(t, cfg.o, cfg.complete, cfg.silent, 24*PageSize, 17*PageSize+1000, 8*PageSize)
			c := randChoices{rand.New(rand.NewPCG(seed, 0x9a6e))}
			for i := range steps {
				r.step(c)
				r.verify(c)
				if t.Failed() {
					t.Fatalf("%s seed %d step %d", cfg.name, seed, i)
				}
			}
			st := r.x.Stats()
			if cfg.complete && (st.Evicted != 0 || st.Skipped != 0) {
				t.Errorf("%s: a complete configuration evicted: %+v", cfg.name, st)
			}
			t.Logf("%s seed %d: %d entries, %+v", cfg.name, seed, r.x.Len(), st)
		}
	}
}

// FuzzIndex decodes its input into an index configuration and a sequence
// of operations on a model disk set, with the invariants of
// TestModelProperty checked after each.
func FuzzIndex(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte{0x01, 0, 0, 0, 3, 1, 2, 3, 4, 6, 1, 7, 7})
	f.Add([]byte{0x05, 1, 0, 2, 5, 5, 5, 5, 5, 1, 6, 9, 9, 0, 3, 2, 3})
	f.Add(bytes.Repeat([]byte{0x2a, 7, 1, 200, 3, 11, 12, 13}, 20))
	f.Add(bytes.Repeat([]byte{0x16, 3, 0, 9, 9, 2, 8}, 30))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 || len(in) > 1024 {
			return
		}
		cfg := in[0]
		o := Options{MaxEntries: []int{1024, 3, 8, 20}[cfg>>2&3], MaxCopies: -1, MaxProbe: 1 << 20}
		complete := o.MaxEntries == 1024
		switch cfg & 3 {
		case 1:
			o.Hash = weakHash
		case 2:
			o.Hash = constHash
		}
		if cfg&0x10 != 0 {
			o.MaxCopies = 2
			complete = false
		}
		if cfg&0x20 != 0 {
			o.MaxProbe = 2
			complete = complete && cfg&3 == 0
		}
		silent := cfg&0x40 != 0
		r := newModelRun(t, o, complete, silent, 8*PageSize, 5*PageSize+1000, 3*PageSize)
		c := &byteChoices{b: in[1:]}
		for !c.done {
			r.step(c)
			r.verify(c)
		}
	})
}
