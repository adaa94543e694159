package pagecache

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"runtime"

	"github.com/drsync/drsync/internal/offheap"

	"github.com/cespare/xxhash/v2"
)

// PageSize is the granularity of the index: a reference stands for 4 KiB.
const PageSize = 4096

// Defaults and limits of Options.
const (
	DefaultMaxEntries = 1 << 20 // 4 GiB worth of pages, 40 MiB of index
	DefaultMaxProbe   = 4
	DefaultMaxCopies  = 8
	// MaxMaxEntries bounds Options.MaxEntries: entries are named by int32.
	MaxMaxEntries = 1 << 30
)

// maxPages is the first page index that cannot be indexed: an entry keeps
// its page as a u32, so pages at or beyond 16 TiB of a target are never
// indexed (and so never need invalidating).
const maxPages = 1 << 32

// EntryBytes is the size of one slot of the entry slab. With the two
// bucket-head arrays (4 bytes each per bucket, one bucket per entry when
// MaxEntries is a power of two) an indexed page costs BytesPerEntry.
const (
	EntryBytes    = 32
	BytesPerEntry = EntryBytes + 2*4
	// PagesPerGiB is how many 4 KiB pages one GiB of disk holds.
	PagesPerGiB = (1 << 30) / PageSize
	// BytesPerGiB is the stated cost of indexing one GiB of non-zero disk
	// pages: 262,144 × 40 B = 10 MiB.
	BytesPerGiB = PagesPerGiB * BytesPerEntry
)

// chunkBits sizes the slab chunks: 16 Ki entries, 512 KiB. The slab grows a
// chunk at a time up to MaxEntries, so a small disk never pays for a large
// bound, and growing never copies entries.
const (
	chunkBits = 14
	chunkLen  = 1 << chunkBits
	chunkMask = chunkLen - 1
)

// minBuckets is the initial size of both bucket arrays.
const minBuckets = 1 << 10

// Loc is a 4 KiB-aligned page of a disk target.
type Loc struct {
	Target uint16
	Off    int64 // byte offset, a multiple of PageSize
}

func (l Loc) String() string { return fmt.Sprintf("target %d offset %d", l.Target, l.Off) }

// Options configures an Index. The zero value is usable.
type Options struct {
	// MaxEntries bounds the number of indexed pages, and so the memory:
	// at most MaxEntries × BytesPerEntry (40 B) when MaxEntries is a power
	// of two, at most MaxEntries × 48 B otherwise (the bucket arrays are a
	// power of two). 0 means DefaultMaxEntries.
	MaxEntries int
	// MaxProbe is how many candidates Lookup returns and Find reads at most
	// for one page. 0 means DefaultMaxProbe.
	MaxProbe int
	// MaxCopies is how many locations of the same content are kept; more
	// copies of a page already indexed that often are not indexed (they
	// would spend entries on content that is already findable). 0 means
	// DefaultMaxCopies; a negative value means no limit.
	MaxCopies int
	// Hash is the page hash; nil means xxhash64, the hash blockhash uses,
	// so a RAM table's 4 KiB page hashes can be passed to FindHash. Tests
	// inject weak hashes to force collisions.
	Hash func([]byte) uint64
}

// Stats counts what the index did since New.
type Stats struct {
	Evicted    uint64 // entries dropped by the clock to stay within MaxEntries
	Skipped    uint64 // copies not indexed: MaxCopies of that content were indexed already
	Stale      uint64 // entries dropped by Find: bytes read no longer hash to the entry's hash
	Collisions uint64 // candidates whose bytes hash the same but differ from the page
	Hits       uint64 // Find calls that returned a verified location
	Misses     uint64 // Find calls that did not
	Reads      uint64 // pages read through a PageReader
}

// PageReader reads the 4 KiB at loc into buf (len(buf) == PageSize). The
// bytes must be what the replica holds there (or will hold once the epoch
// being planned commits), as seen by the sender. A reader must not call
// back into the Index.
type PageReader interface {
	ReadPage(loc Loc, buf []byte) error
}

// entry is one indexed page. Entries live in a slab and name each other by
// int32 slot number; -1 is none.
type entry struct {
	hash  uint64
	page  uint32 // offset / PageSize
	tgt   uint16
	flags uint16
	bnext int32 // hash bucket chain (group heads only); free list link
	dnext int32 // ring of the entries with the same hash
	dprev int32
	lnext int32 // location bucket chain
}

const (
	fLive uint16 = 1 << iota
	fHead        // first entry of its hash group: the one on the bucket chain
	fRef         // verified by Find since the clock hand last passed
)

const none = -1

// Index is a bounded content index of the disk pages the replica holds:
// page hash → locations. It is not safe for concurrent use.
type Index struct {
	max, probe, copies int
	hash               func([]byte) uint64

	chunks [][]entry
	used   int32 // slots ever handed out: the slab's prefix [0, used)
	free   int32 // free list through bnext
	live   int
	hand   int32 // clock hand over [0, max)

	hb, lb []int32 // bucket heads: by hash (group heads), by location
	shift  uint    // 64 - log2(len(hb))
	nbMax  int

	cand []int32
	buf  []byte
	st   Stats

	// mem holds the slab chunks and bucket arrays, outside the Go heap:
	// they live as long as the index, and on the heap the collector's
	// headroom would double what they cost. A cleanup releases it once
	// the index is dropped.
	mem *offheap.Arena
}

// New returns an empty index.
func New(o Options) (*Index, error) {
	switch {
	case o.MaxEntries < 0 || o.MaxEntries > MaxMaxEntries:
		return nil, fmt.Errorf("pagecache: MaxEntries %d outside [0, %d]", o.MaxEntries, MaxMaxEntries)
	case o.MaxProbe < 0:
		return nil, fmt.Errorf("pagecache: MaxProbe %d is negative", o.MaxProbe)
	}
	x := &Index{max: o.MaxEntries, probe: o.MaxProbe, copies: o.MaxCopies, hash: o.Hash, free: none, mem: &offheap.Arena{}}
	runtime.AddCleanup(x, (*offheap.Arena).Release, x.mem)
	if x.max == 0 {
		x.max = DefaultMaxEntries
	}
	if x.probe == 0 {
		x.probe = DefaultMaxProbe
	}
	if x.copies == 0 {
		x.copies = DefaultMaxCopies
	}
	if x.hash == nil {
		x.hash = xxhash.Sum64
	}
	x.nbMax = 1
	for x.nbMax < x.max {
		x.nbMax <<= 1
	}
	x.setBuckets(min(minBuckets, x.nbMax))
	x.buf = make([]byte, PageSize)
	return x, nil
}

// Len is the number of indexed pages.
func (x *Index) Len() int { return x.live }

// Stats returns the counters.
func (x *Index) Stats() Stats { return x.st }

// MemoryBytes estimates the index's current footprint: the slab chunks,
// the bucket arrays and the scratch buffers.
func (x *Index) MemoryBytes() int {
	n := 0
	for _, c := range x.chunks {
		n += len(c) * EntryBytes
	}
	return n + 4*(len(x.hb)+len(x.lb)+cap(x.cand)) + len(x.buf) + 8*cap(x.chunks) + 160
}

// Hash is the index's page hash of p.
func (x *Index) Hash(p []byte) uint64 { return x.hash(p) }

func (x *Index) ent(i int32) *entry { return &x.chunks[i>>chunkBits][i&chunkMask] }

func mix(v uint64) uint64 { return v * 0x9e3779b97f4a7c15 }

func (x *Index) hbucket(h uint64) uint64 { return mix(h) >> x.shift }

// lbucket places consecutive pages of a target in consecutive buckets,
// each target starting at its own scrambled origin: a write of a run of
// pages (and the clock, which meets slots in the order a run filled them)
// walks the location buckets in order instead of missing the cache on
// each page.
func (x *Index) lbucket(t uint16, p uint32) uint64 {
	return (mix(uint64(t)+1)>>32 + uint64(p)) & uint64(len(x.lb)-1)
}

func (x *Index) setBuckets(n int) {
	offheap.Free(x.mem, x.hb)
	offheap.Free(x.mem, x.lb)
	x.hb = offheap.Slice[int32](x.mem, n)
	x.lb = offheap.Slice[int32](x.mem, n)
	for i := range x.hb {
		x.hb[i], x.lb[i] = none, none
	}
	bits := uint(0)
	for 1<<bits < n {
		bits++
	}
	x.shift = 64 - bits // 64 when n == 1: every key lands in bucket 0
}

// grow doubles both bucket arrays and relinks every live entry.
func (x *Index) grow() {
	x.setBuckets(2 * len(x.hb))
	for i := int32(0); i < x.used; i++ {
		e := x.ent(i)
		if e.flags&fLive == 0 {
			continue
		}
		b := x.lbucket(e.tgt, e.page)
		e.lnext, x.lb[b] = x.lb[b], i
		if e.flags&fHead != 0 {
			b = x.hbucket(e.hash)
			e.bnext, x.hb[b] = x.hb[b], i
		}
	}
}

// locFind returns the entry of page p of target t, or none.
func (x *Index) locFind(t uint16, p uint32) int32 {
	for i := x.lb[x.lbucket(t, p)]; i != none; {
		e := x.ent(i)
		if e.page == p && e.tgt == t {
			return i
		}
		i = e.lnext
	}
	return none
}

// group returns the head entry of the entries with hash h, or none.
func (x *Index) group(h uint64) int32 {
	for i := x.hb[x.hbucket(h)]; i != none; {
		e := x.ent(i)
		if e.hash == h {
			return i
		}
		i = e.bnext
	}
	return none
}

// remove unlinks live entry i from both structures and frees it.
func (x *Index) remove(i int32) {
	e := x.ent(i)
	// Location chain.
	p := &x.lb[x.lbucket(e.tgt, e.page)]
	for *p != i {
		p = &x.ent(*p).lnext
	}
	*p = e.lnext
	// Hash group.
	if e.flags&fHead == 0 {
		x.ent(e.dprev).dnext = e.dnext
		x.ent(e.dnext).dprev = e.dprev
	} else {
		repl := e.bnext
		if e.dnext != i { // promote the next copy to head
			n := x.ent(e.dnext)
			x.ent(e.dprev).dnext = e.dnext
			n.dprev = e.dprev
			n.flags |= fHead
			n.bnext = e.bnext
			repl = e.dnext
		}
		p := &x.hb[x.hbucket(e.hash)]
		for *p != i {
			p = &x.ent(*p).bnext
		}
		*p = repl
	}
	*e = entry{bnext: x.free}
	x.free = i
	x.live--
}

// alloc returns a free slot, evicting by clock when the slab is full.
func (x *Index) alloc() (i int32, evicted bool) {
	if x.free != none {
		i = x.free
		x.free = x.ent(i).bnext
		return i, false
	}
	if int(x.used) < x.max {
		if int(x.used) == len(x.chunks)<<chunkBits {
			x.chunks = append(x.chunks, offheap.Slice[entry](x.mem, min(chunkLen, x.max-int(x.used))))
		}
		i = x.used
		x.used++
		return i, false
	}
	// Full: every slot is live. Second chance: a slot verified by Find
	// since the last pass loses its mark and is skipped once.
	for {
		i = x.hand
		if x.hand++; int(x.hand) == x.max {
			x.hand = 0
		}
		e := x.ent(i)
		if e.flags&fRef != 0 {
			e.flags &^= fRef
			continue
		}
		x.remove(i)
		x.free = e.bnext // take i back off the free list
		x.st.Evicted++
		return i, true
	}
}

// insert indexes page p of target t as holding content of hash h. There
// must be no entry for that page.
func (x *Index) insert(t uint16, p uint32, h uint64) {
	g := x.group(h)
	if g != none && x.copies > 0 && x.ringLen(g, x.copies) >= x.copies {
		x.st.Skipped++
		return
	}
	i, evicted := x.alloc()
	if evicted {
		g = x.group(h) // the victim may have been g or one of its copies
	}
	e := x.ent(i)
	*e = entry{hash: h, page: p, tgt: t, flags: fLive}
	b := x.lbucket(t, p)
	e.lnext, x.lb[b] = x.lb[b], i
	if g == none {
		e.flags |= fHead
		b = x.hbucket(h)
		e.bnext, x.hb[b] = x.hb[b], i
		e.dnext, e.dprev = i, i
	} else {
		ge := x.ent(g)
		e.dprev, e.dnext = g, ge.dnext
		x.ent(ge.dnext).dprev = i
		ge.dnext = i
		e.bnext = none
	}
	x.live++
	if x.live > len(x.hb) && len(x.hb) < x.nbMax {
		x.grow()
	}
}

// ringLen counts the entries of group g, stopping at limit.
func (x *Index) ringLen(g int32, limit int) int {
	n := 1
	for i := x.ent(g).dnext; i != g && n < limit; i = x.ent(i).dnext {
		n++
	}
	return n
}

var zeroPage [PageSize]byte

// pageRange returns the pages overlapping [from, to), clamped to the
// indexable pages.
func pageRange(from, to int64) (first, last int64) {
	if from < 0 {
		from = 0
	}
	if to <= from {
		return 0, 0
	}
	first = from / PageSize
	last = to / PageSize
	if to%PageSize != 0 {
		last++
	}
	return min(first, maxPages), min(last, maxPages)
}

// invalidate drops every entry of target t on a page overlapping
// [from, to): visiting the pages, or the slab when that is shorter.
func (x *Index) invalidate(t uint16, from, to int64) {
	first, last := pageRange(from, to)
	if first >= last || x.live == 0 {
		return
	}
	if last-first > int64(x.used) {
		for i := int32(0); i < x.used; i++ {
			e := x.ent(i)
			if e.flags&fLive != 0 && e.tgt == t && int64(e.page) >= first && int64(e.page) < last {
				x.remove(i)
			}
		}
		return
	}
	for p := first; p < last; p++ {
		if i := x.locFind(t, uint32(p)); i != none {
			x.remove(i)
		}
	}
}

// clampEnd returns off + n, saturating at MaxInt64.
func clampEnd(off, n int64) int64 {
	if off > math.MaxInt64-n {
		return math.MaxInt64
	}
	return off + n
}

// Update records that [off, off+len(data)) of disk target t now holds
// data. Entries on those pages are dropped unless they already hold the
// same hash; whole non-zero pages are indexed. Pages only partly covered
// (an unaligned start or end, a disk's short last page) are dropped and not
// indexed: their other bytes are not known here.
func (x *Index) Update(t uint16, off int64, data []byte) {
	if off < 0 {
		if -off >= int64(len(data)) {
			return
		}
		data = data[-off:]
		off = 0
	}
	if off >= maxPages*PageSize {
		return // never indexed there
	}
	end := clampEnd(off, int64(len(data)))
	first := (off + PageSize - 1) / PageSize // first whole page
	last := end / PageSize                   // end of whole pages
	if first >= last {
		x.invalidate(t, off, end)
		return
	}
	x.invalidate(t, off, first*PageSize)
	x.invalidate(t, last*PageSize, end)
	d := data[first*PageSize-off:]
	for p := first; p < last && p < maxPages; p++ {
		pg := d[:PageSize:PageSize]
		d = d[PageSize:]
		i := x.locFind(t, uint32(p))
		if bytes.Equal(pg, zeroPage[:]) {
			if i != none {
				x.remove(i)
			}
			continue
		}
		h := x.hash(pg)
		if i != none {
			if x.ent(i).hash == h {
				continue
			}
			x.remove(i)
		}
		x.insert(t, uint32(p), h)
	}
}

// SetPage records that the 4 KiB page at off (a multiple of PageSize) of
// target t now holds non-zero content of hash h, by the index's hash
// function: Update for a caller that has hashed the page already, such as
// a planner that hashes every RAM page anyway. An unaligned off drops the
// pages it touches instead.
func (x *Index) SetPage(t uint16, off int64, h uint64) {
	if off < 0 || off >= maxPages*PageSize {
		return
	}
	if off%PageSize != 0 {
		x.invalidate(t, off, clampEnd(off, PageSize))
		return
	}
	p := uint32(off / PageSize)
	if i := x.locFind(t, p); i != none {
		if x.ent(i).hash == h {
			return
		}
		x.remove(i)
	}
	x.insert(t, p, h)
}

// Zero records that [off, off+n) of disk target t now reads as zeros. Zero
// pages are never indexed (they travel as zero runs), so every page the
// range touches is dropped.
func (x *Index) Zero(t uint16, off, n int64) {
	if n <= 0 {
		return
	}
	x.invalidate(t, off, clampEnd(off, n))
}

// Forget drops every entry of target t: the target is gone, or its content
// is no longer known.
func (x *Index) Forget(t uint16) {
	x.invalidate(t, 0, maxPages*PageSize)
}

// loadChunk is how much LoadTarget reads at once.
const loadChunk = 1 << 20

// LoadTarget replaces what the index knows of disk target t by its whole
// content, size bytes read through read in chunks of up to 1 MiB (read
// fills buf from offset off and must not call back into the index). On an
// error the pages read so far stay indexed, which is still exact.
func (x *Index) LoadTarget(t uint16, size int64, read func(off int64, buf []byte) error) error {
	x.Forget(t)
	buf := make([]byte, loadChunk)
	for off := int64(0); off < size; {
		n := int(min(int64(loadChunk), size-off))
		if err := read(off, buf[:n]); err != nil {
			return fmt.Errorf("pagecache: load target %d at %d: %w", t, off, err)
		}
		// Pages are fresh after Forget: no location lookups needed.
		for o := 0; o+PageSize <= n; o += PageSize {
			p := (off + int64(o)) / PageSize
			if p >= maxPages {
				return nil
			}
			pg := buf[o : o+PageSize]
			if !bytes.Equal(pg, zeroPage[:]) {
				x.insert(t, uint32(p), x.hash(pg))
			}
		}
		off += int64(n)
	}
	return nil
}

// Lookup returns up to MaxProbe locations recorded as holding content of
// hash h. They hold it unless the caller missed an Update, or the content
// is a different page with the same hash: verify before use (Find does).
func (x *Index) Lookup(h uint64) []Loc {
	g := x.group(h)
	if g == none {
		return nil
	}
	var out []Loc
	i := g
	for {
		e := x.ent(i)
		out = append(out, Loc{Target: e.tgt, Off: int64(e.page) * PageSize})
		if i = e.dnext; i == g || len(out) == x.probe {
			return out
		}
	}
}

// ErrPageSize is returned by Find for a page that is not PageSize bytes.
var ErrPageSize = errors.New("pagecache: page is not 4096 bytes")

// Find returns a location whose bytes, read through r, equal page.
func (x *Index) Find(page []byte, r PageReader) (Loc, bool, error) {
	if len(page) != PageSize {
		return Loc{}, false, ErrPageSize
	}
	if bytes.Equal(page, zeroPage[:]) {
		x.st.Misses++
		return Loc{}, false, nil
	}
	return x.FindHash(x.hash(page), page, r)
}

// FindHash is Find for a page whose hash (by the index's hash function) is
// already known, such as a RAM table's 4 KiB page hash. A wrong h only
// costs a miss: the bytes are still compared.
//
// Up to MaxProbe candidates are read. A candidate is used only if its
// bytes equal page. One whose bytes differ and no longer hash to h is stale
// and dropped; one whose bytes differ but hash to h is a collision and
// stays, as it is a true entry for other content.
func (x *Index) FindHash(h uint64, page []byte, r PageReader) (Loc, bool, error) {
	if len(page) != PageSize {
		return Loc{}, false, ErrPageSize
	}
	g := x.group(h)
	if g == none || bytes.Equal(page, zeroPage[:]) {
		x.st.Misses++
		return Loc{}, false, nil
	}
	x.cand = x.cand[:0]
	for i := g; ; {
		x.cand = append(x.cand, i)
		if i = x.ent(i).dnext; i == g || len(x.cand) == x.probe {
			break
		}
	}
	for _, i := range x.cand {
		e := x.ent(i)
		loc := Loc{Target: e.tgt, Off: int64(e.page) * PageSize}
		x.st.Reads++
		if err := r.ReadPage(loc, x.buf); err != nil {
			return Loc{}, false, fmt.Errorf("pagecache: verify %v: %w", loc, err)
		}
		if bytes.Equal(x.buf, page) {
			e.flags |= fRef
			x.st.Hits++
			return loc, true, nil
		}
		if x.hash(x.buf) != e.hash {
			x.remove(i)
			x.st.Stale++
		} else {
			x.st.Collisions++
		}
	}
	x.st.Misses++
	return Loc{}, false, nil
}

// Dups finds repeated hashes in a set of page hashes: out[i] is the index
// of the first j with hashes[j] == hashes[i], so out[i] == i for a first
// occurrence and out[i] < i for a repeat. Equal hashes are candidates
// only: compare the bytes before sending one page as a reference to the
// other. It uses 8 bytes per hash of scratch (an open-addressed table at
// most half full) besides the result; len(hashes) must be below 2^31.
func Dups(hashes []uint64) []int32 {
	out := make([]int32, len(hashes))
	size, bits := 2, uint(1)
	for size < 2*len(hashes) {
		size <<= 1
		bits++
	}
	tab := make([]uint32, size) // 1 + index of a first occurrence; 0 empty
	mask := uint64(size - 1)
	for i, h := range hashes {
		for j := mix(h) >> (64 - bits); ; j = (j + 1) & mask {
			v := tab[j]
			if v == 0 {
				tab[j] = uint32(i + 1)
				out[i] = int32(i)
				break
			}
			if hashes[v-1] == h {
				out[i] = int32(v - 1)
				break
			}
		}
	}
	return out
}
