package pagecache

import (
	"errors"
	"slices"
	"testing"
	"unsafe"
)

// h drives an index and its model together.
type h struct {
	t *testing.T
	x *Index
	m *disks
}

// put writes pages to the model and reports them to the index.
func (c *h) put(tgt uint16, off int64, pages ...[]byte) {
	c.t.Helper()
	data := slices.Concat(pages...)
	copy(c.m.d[tgt][off:], data)
	c.x.Update(tgt, off, data)
	mustCheck(c.t, c.x, c.m)
}

func (c *h) zero(tgt uint16, off, n int64) {
	c.t.Helper()
	clear(c.m.d[tgt][off : off+n])
	c.x.Zero(tgt, off, n)
	mustCheck(c.t, c.x, c.m)
}

func (c *h) find(p []byte) (Loc, bool) {
	c.t.Helper()
	loc, ok, err := c.x.Find(p, c.m)
	if err != nil {
		c.t.Fatal(err)
	}
	if ok && !slices.Equal(c.m.page(loc), p) {
		c.t.Fatalf("Find returned %v whose bytes differ", loc)
	}
	mustCheck(c.t, c.x, c.m)
	return loc, ok
}

func (c *h) wantFind(p []byte, want ...Loc) {
	c.t.Helper()
	loc, ok := c.find(p)
	if !ok {
		c.t.Fatalf("Find: not found, want one of %v", want)
	}
	if len(want) > 0 && !slices.Contains(want, loc) {
		c.t.Fatalf("Find: %v, want one of %v", loc, want)
	}
}

func (c *h) wantMiss(p []byte) {
	c.t.Helper()
	if loc, ok := c.find(p); ok {
		c.t.Fatalf("Find: %v, want not found", loc)
	}
}

func (c *h) wantLookup(p []byte, want ...Loc) {
	c.t.Helper()
	got := c.x.Lookup(c.x.Hash(p))
	if !sameSet(got, want) {
		c.t.Fatalf("Lookup: %v, want %v", got, want)
	}
}

func (c *h) wantLen(n int) {
	c.t.Helper()
	if c.x.Len() != n {
		c.t.Fatalf("Len %d, want %d", c.x.Len(), n)
	}
}

func sameSet(a, b []Loc) bool {
	cmp := func(p, q Loc) int {
		if p.Target != q.Target {
			return int(p.Target) - int(q.Target)
		}
		return int(p.Off - q.Off)
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, cmp)
	slices.SortFunc(b, cmp)
	return slices.Equal(a, b)
}

func L(t uint16, page int64) Loc { return Loc{Target: t, Off: page * PageSize} }

func TestIndex(t *testing.T) {
	A, B, C, D := pat(1), pat(2), pat(3), pat(4)
	zero := make([]byte, PageSize)
	cases := []struct {
		name string
		opts Options
		run  func(c *h)
	}{
		{"add and lookup", Options{}, func(c *h) {
			c.put(0, 2*PageSize, A, B)
			c.wantLen(2)
			c.wantLookup(A, L(0, 2))
			c.wantLookup(B, L(0, 3))
			c.wantFind(A, L(0, 2))
			c.wantFind(B, L(0, 3))
			c.wantMiss(C)
			c.wantLookup(C)
		}},
		{"overwrite invalidates", Options{}, func(c *h) {
			c.put(0, 0, A, B)
			c.put(0, 0, C)
			c.wantLen(2)
			c.wantLookup(A)
			c.wantMiss(A)
			c.wantFind(C, L(0, 0))
			c.wantFind(B, L(0, 1))
		}},
		{"rewrite with the same content keeps the entry", Options{}, func(c *h) {
			c.put(1, PageSize, A)
			c.wantFind(A)
			c.put(1, PageSize, A)
			c.wantLen(1)
			c.wantFind(A, L(1, 1))
		}},
		{"zero invalidates every touched page", Options{}, func(c *h) {
			c.put(0, 0, A, B, C)
			c.zero(0, PageSize+100, 1) // one byte inside page 1
			c.wantLen(2)
			c.wantLookup(B)
			c.wantMiss(B)
			c.wantFind(A, L(0, 0))
			c.wantFind(C, L(0, 2))
			c.zero(0, 0, 16*PageSize)
			c.wantLen(0)
			c.wantMiss(A)
		}},
		{"zero over a range larger than the slab scans it", Options{MaxEntries: 4}, func(c *h) {
			c.put(0, 0, A, B)
			c.put(1, 0, C)
			c.x.Zero(0, 0, 1<<40) // the model's disk is short; nothing there is indexed anyway
			clear(c.m.d[0])
			mustCheck(c.t, c.x, c.m)
			c.wantLen(1)
			c.wantFind(C, L(1, 0))
		}},
		{"zero pages are never indexed", Options{}, func(c *h) {
			c.put(0, 0, zero, A, zero)
			c.wantLen(1)
			c.wantMiss(zero)
			c.put(0, PageSize, zero)
			c.wantLen(0)
		}},
		{"unaligned update drops the partly covered pages", Options{}, func(c *h) {
			c.put(0, 0, A, B, C)
			c.put(0, PageSize-512, D[:1024]) // end of page 0, start of page 1
			c.wantLen(1)
			c.wantMiss(A)
			c.wantMiss(B)
			c.wantFind(C, L(0, 2))
			c.put(0, 512, D[:3*PageSize/4]) // inside page 0 only
			c.wantLen(1)
			c.put(0, PageSize-512, A[:512], D, B[:512]) // partial page 0, whole page 1, partial page 2
			c.wantLen(1)
			c.wantFind(D, L(0, 1))
			c.wantMiss(C)
		}},
		{"duplicate content at several locations", Options{}, func(c *h) {
			c.put(0, 0, A)
			c.put(0, 5*PageSize, A)
			c.put(1, 2*PageSize, A)
			c.put(1, 3*PageSize, B)
			c.wantLen(4)
			c.wantLookup(A, L(0, 0), L(0, 5), L(1, 2))
			c.wantFind(A, L(0, 0), L(0, 5), L(1, 2))
			c.put(0, 0, C) // the first copy (the group's head) goes
			c.wantLookup(A, L(0, 5), L(1, 2))
			c.zero(1, 2*PageSize, PageSize)
			c.wantLookup(A, L(0, 5))
			c.wantFind(A, L(0, 5))
			c.put(0, 5*PageSize, D)
			c.wantLookup(A)
			c.wantMiss(A)
			c.wantLen(3)
		}},
		{"copies beyond MaxCopies are not indexed", Options{MaxCopies: 2}, func(c *h) {
			c.put(0, 0, A, A, A, B)
			c.wantLen(3)
			c.wantLookup(A, L(0, 0), L(0, 1))
			if c.x.Stats().Skipped != 1 {
				c.t.Fatalf("skipped %d, want 1", c.x.Stats().Skipped)
			}
			c.put(0, PageSize, C) // a copy goes: the next write of A is indexed
			c.put(0, 9*PageSize, A)
			c.wantLookup(A, L(0, 0), L(0, 9))
		}},
		{"Lookup and Find stop at MaxProbe", Options{MaxProbe: 2, Hash: constHash}, func(c *h) {
			c.put(0, 0, A, B, C)
			if got := c.x.Lookup(7); len(got) != 2 {
				c.t.Fatalf("Lookup returned %d, want 2", len(got))
			}
			c.m.reads = 0
			if _, ok := c.find(D); ok || c.m.reads != 2 {
				c.t.Fatalf("Find of absent page: ok %v after %d reads, want a miss after 2", ok, c.m.reads)
			}
		}},
		{"eviction keeps the bound", Options{MaxEntries: 4}, func(c *h) {
			for i := range 10 {
				c.put(0, int64(i)*PageSize, pat(uint64(100+i)))
				if c.x.Len() > 4 {
					c.t.Fatalf("Len %d over the bound", c.x.Len())
				}
			}
			c.wantLen(4)
			if ev := c.x.Stats().Evicted; ev != 6 {
				c.t.Fatalf("evicted %d, want 6", ev)
			}
			c.wantFind(pat(109), L(0, 9))
			if mb := c.x.MemoryBytes(); mb > 4*48+PageSize+400 {
				c.t.Fatalf("MemoryBytes %d for 4 entries", mb)
			}
		}},
		{"clock spares entries Find verified", Options{MaxEntries: 4}, func(c *h) {
			c.put(0, 0, A, B, C, D)
			c.wantFind(A, L(0, 0))
			c.put(1, 0, pat(10), pat(11)) // evicts B and C, not A
			c.wantLen(4)
			c.wantFind(A, L(0, 0))
			c.wantMiss(B)
			c.wantMiss(C)
			c.wantFind(D, L(0, 3))
		}},
		{"eviction of a group's copies", Options{MaxEntries: 3}, func(c *h) {
			c.put(0, 0, A, A, A)
			c.put(0, 3*PageSize, B, A, C) // B evicts the head of A; A again; C
			c.wantLen(3)
			mustCheck(c.t, c.x, c.m)
			c.wantFind(C, L(0, 5))
		}},
		{"collision: Find rejects the mismatching candidate and keeps it", Options{Hash: constHash}, func(c *h) {
			c.put(0, 0, A)
			c.put(0, PageSize, B)
			c.wantLookup(C, L(0, 0), L(0, 1)) // every page "matches"
			c.wantFind(B, L(0, 1))
			c.wantFind(A, L(0, 0))
			c.wantMiss(C)
			c.wantLen(2)
			if st := c.x.Stats(); st.Collisions == 0 || st.Stale != 0 {
				c.t.Fatalf("stats %+v: want collisions and nothing stale", st)
			}
		}},
		{"stale entry: Find drops it", Options{}, func(c *h) {
			c.put(0, 0, A, B)
			copy(c.m.d[0][0:], C) // a change the index was not told of
			if _, ok, err := c.x.Find(A, c.m); ok || err != nil {
				c.t.Fatalf("Find of a stale page: ok %v err %v", ok, err)
			}
			c.wantLen(1)
			if st := c.x.Stats(); st.Stale != 1 {
				c.t.Fatalf("stale %d, want 1", st.Stale)
			}
			c.wantFind(B, L(0, 1))
		}},
		{"reader errors are returned and drop nothing", Options{}, func(c *h) {
			c.put(0, 0, A)
			c.m.fail = errors.New("disk gone")
			if _, ok, err := c.x.Find(A, c.m); ok || !errors.Is(err, c.m.fail) {
				c.t.Fatalf("Find: ok %v err %v", ok, err)
			}
			c.m.fail = nil
			c.wantFind(A, L(0, 0))
		}},
		{"forget and load a target", Options{}, func(c *h) {
			c.put(0, 0, A)
			c.put(1, 0, B, zero, C, A)
			c.x.Forget(1)
			mustCheck(c.t, c.x, c.m)
			c.wantLen(1)
			c.wantMiss(B)
			if err := c.x.LoadTarget(1, int64(len(c.m.d[1])), c.m.read(1)); err != nil {
				c.t.Fatal(err)
			}
			mustCheck(c.t, c.x, c.m)
			c.wantLen(4)
			c.wantLookup(A, L(0, 0), L(1, 3))
			c.wantFind(C, L(1, 2))
		}},
		{"load stops at a read error, keeping what it read", Options{}, func(c *h) {
			copy(c.m.d[1][(16<<10)-PageSize:], A)
			bad := errors.New("bad sector")
			n := 0
			err := c.x.LoadTarget(1, 1<<21, func(off int64, buf []byte) error {
				if n++; n > 1 {
					return bad
				}
				clear(buf)
				copy(buf, c.m.d[1])
				return nil
			})
			if !errors.Is(err, bad) {
				c.t.Fatalf("LoadTarget: %v", err)
			}
			mustCheck(c.t, c.x, c.m)
			c.wantFind(A, L(1, 3))
		}},
		{"wrong page size", Options{}, func(c *h) {
			if _, _, err := c.x.Find(A[:100], c.m); !errors.Is(err, ErrPageSize) {
				c.t.Fatalf("Find of 100 bytes: %v", err)
			}
		}},
		{"offsets out of range are ignored", Options{}, func(c *h) {
			c.x.Update(0, -PageSize, slices.Concat(A, B)) // A before 0 is dropped, B lands at 0
			copy(c.m.d[0], B)
			mustCheck(c.t, c.x, c.m)
			c.wantFind(B, L(0, 0))
			c.x.Update(0, maxPages*PageSize, A)
			c.x.Zero(0, 1<<62, 1<<62)
			c.x.Zero(0, 0, -1)
			c.wantLen(1)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x, err := New(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			tc.run(&h{t: t, x: x, m: newDisks(16*PageSize, 16*PageSize)})
		})
	}
}

func TestNewOptions(t *testing.T) {
	for _, o := range []Options{{MaxEntries: -1}, {MaxEntries: MaxMaxEntries + 1}, {MaxProbe: -1}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
	x, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if x.max != DefaultMaxEntries || x.probe != DefaultMaxProbe || x.copies != DefaultMaxCopies {
		t.Fatalf("defaults: %d %d %d", x.max, x.probe, x.copies)
	}
	if x.Hash(pat(1)) == x.Hash(pat(2)) {
		t.Fatal("default hash collides")
	}
}

func TestEntrySize(t *testing.T) {
	if s := unsafe.Sizeof(entry{}); s != EntryBytes {
		t.Fatalf("entry is %d bytes, EntryBytes says %d", s, EntryBytes)
	}
}

// TestGrow fills past several bucket doublings, with copies, and empties
// the index again.
func TestGrow(t *testing.T) {
	const n = 5000
	x, err := New(Options{MaxEntries: n, MaxCopies: -1})
	if err != nil {
		t.Fatal(err)
	}
	m := newDisks(n * PageSize)
	for i := range n {
		p := pat(uint64(i % 3000))
		copy(m.d[0][i*PageSize:], p)
		x.Update(0, int64(i)*PageSize, p)
	}
	mustCheck(t, x, m)
	if x.Len() != n || len(x.hb) != 8192 {
		t.Fatalf("Len %d buckets %d", x.Len(), len(x.hb))
	}
	for i := 0; i < n; i += 97 {
		if loc, ok, err := x.Find(m.page(L(0, int64(i))), m); err != nil || !ok || loc.Off%(3000*PageSize) != int64(i%3000)*PageSize {
			t.Fatalf("page %d: %v %v %v", i, loc, ok, err)
		}
	}
	x.Zero(0, 0, n*PageSize)
	mustCheck(t, x, m)
	if x.Len() != 0 {
		t.Fatalf("Len %d after zeroing everything", x.Len())
	}
}

func TestDups(t *testing.T) {
	for _, tc := range []struct {
		in   []uint64
		want []int32
	}{
		{nil, []int32{}},
		{[]uint64{5}, []int32{0}},
		{[]uint64{1, 2, 3}, []int32{0, 1, 2}},
		{[]uint64{7, 7, 7}, []int32{0, 0, 0}},
		{[]uint64{1, 2, 1, 3, 2, 1, 0, 0}, []int32{0, 1, 0, 3, 1, 0, 6, 6}},
	} {
		if got := Dups(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("Dups(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	// Against a map, on enough hashes to probe past collisions.
	hs := make([]uint64, 50000)
	for i := range hs {
		hs[i] = uint64(i*7919) % 20011 << 20 // equal low bits, many repeats
	}
	got := Dups(hs)
	first := map[uint64]int32{}
	for i, v := range hs {
		if _, ok := first[v]; !ok {
			first[v] = int32(i)
		}
		if got[i] != first[v] {
			t.Fatalf("Dups[%d] = %d, want %d", i, got[i], first[v])
		}
	}
}
