// Package pagecache owns a content index of the disk data the replica
// holds, at 4 KiB granularity: the hash of a page → the disk pages (target,
// offset) holding those bytes. A guest's page cache keeps copies of disk
// blocks, so many RAM pages equal 4 KiB of a disk the replica already has;
// with this index the sender can send such a page as a reference to the
// disk instead of its bytes.
//
// It must not know the wire format, the sender's plan, files or targets'
// names: a target is a uint16, a location a byte offset. It does no IO of
// its own beyond the PageReader its caller hands to Find (and the read
// function handed to LoadTarget).
//
// # Keeping the index true
//
// The caller reports every change of the replica's disks: Update for data
// written, Zero for ranges that now read as zeros, Forget for a target
// whose content is unknown, LoadTarget to (re)build a target from its whole
// content. Invalidation is exact: after Update or Zero over a range, no
// entry names a page in that range with the page's former content. Pages
// only partly covered by a range are dropped. Zero pages are never indexed:
// they travel as zero runs.
//
// A reference must describe the replica as of the end of the epoch that
// carries it, so a caller planning an epoch applies the epoch's disk items
// to the index before it looks RAM pages up.
//
// # Verification rule
//
// A reference is never used unless the bytes match. Find hashes a page,
// reads up to MaxProbe candidates through the PageReader and returns the
// first whose 4 KiB equal the page byte for byte. A candidate whose bytes
// differ and no longer hash to its entry's hash is stale (a change the
// caller did not report) and is dropped; one whose bytes differ but hash
// the same is a collision and stays, as it is a true entry for other
// content. Lookup returns unverified candidates.
//
// xxhash64 is not collision resistant, so a guest could write pages that
// share a hash. That costs efficiency only: Find reads at most MaxProbe
// candidates, a hash keeps at most MaxCopies locations, and a page that
// is not found is sent as data.
//
// # Layout
//
// Every indexed page is one 32-byte entry in a slab of at most MaxEntries
// slots, allocated in chunks of 16 Ki entries (512 KiB) as the index fills,
// and named by int32 slot number. The slab's chunks and the two bucket
// arrays are mapped outside the Go heap (internal/offheap), so the
// collector's headroom does not double them; they go back to the kernel
// when the index is dropped. Each entry sits on two chains at once:
//
//	hash buckets (hb)          slab (chunks of 16 Ki entries)           location buckets (lb)
//	[]int32, 2^k heads         entry: 32 bytes                          []int32, 2^k heads
//	                          +------------------------------------+
//	mix(hash)>>(64-k) ──────▶ | hash u64                           | ◀── (origin(target)+page) mod 2^k
//	                          | page u32 | tgt u16 | flags u16      |
//	                          | bnext i32  next group head, bucket |
//	                          | dnext i32  ┐ ring of the entries   |
//	                          | dprev i32  ┘ with the same hash    |
//	                          | lnext i32  next entry, loc bucket  |
//	                          +------------------------------------+
//
//	hb[b] ─▶ head(h1) ─bnext─▶ head(h2) ─▶ -1      lb[b'] ─▶ e ─lnext─▶ e' ─▶ -1
//	            │ ▲
//	       dnext│ │dprev      (copies of h1 at other locations: a doubly
//	            ▼ │            linked ring, so dropping any copy is O(1))
//	         copy(h1) ─▶ copy(h1) ─▶ back to head(h1)
//
// The flags are live, head (below) and ref (the clock's mark). Free slots
// are chained through bnext.
//
// Only the first entry of a hash (its group head) is on a hash bucket
// chain, so a popular page copied at many locations does not lengthen the
// chains other hashes walk. Lookup walks one hash chain to the group and
// then its ring. Invalidation walks one location chain per page, or the
// slab when the range has more pages than the slab has slots (a Zero over
// a whole large disk). Both bucket arrays double, relinking the entries,
// whenever the index holds more entries than buckets, up to MaxEntries
// rounded up to a power of two, so chains average at most one entry.
// Location buckets take consecutive pages of a target in order, from a
// scrambled origin per target, so writing a run of pages walks them
// sequentially rather than missing the cache once per page.
//
// The reverse map (location → entry) is the second chain rather than a
// dense per-target array of page → hash: such an array costs 8 bytes per
// page of every disk whether or not the page is indexed (2 MiB per GiB, 8
// GiB for a 4 TiB disk) and grows with the disks, not with MaxEntries. The
// location chain costs 8 bytes per entry (lnext and a bucket head), so the
// whole index stays within its bound however large the disks are.
//
// # Memory
//
// An entry costs 32 bytes of slab plus 2 × 4 bytes of bucket heads: 40
// bytes (BytesPerEntry) when MaxEntries is a power of two, up to 48
// otherwise. A GiB of disk is 262,144 pages, so indexing a GiB of non-zero
// data costs 262,144 × 40 B = 10 MiB (BytesPerGiB), about 1% of the data;
// the default MaxEntries (2^20, 4 GiB of pages) caps the index at 40 MiB.
// The whole index never holds more than MaxEntries × (32 + 8 ×
// buckets/MaxEntries) bytes plus a page of scratch (while the bucket
// arrays double, the old pair is garbage until the next collection).
// TestMemoryPerGiB and BenchmarkMemoryPerGiB measure an index of one GiB
// of pages with runtime.MemStats: 39.9 B per page against the stated 40.
//
// Pages at or beyond 16 TiB of a target are not indexed (an entry keeps
// the page number as a u32).
//
// # Eviction
//
// When the slab is full, a new page takes the slot of a victim chosen by
// CLOCK (second chance): a hand sweeps the slots in order; a slot that Find
// verified since the hand last passed loses its mark and is spared once,
// any other is evicted. Entries that have served as references (shared
// libraries, hot files: what stays in a guest's page cache) survive, and
// among the others the oldest slot goes first, so recently written data,
// which the guest is likeliest to have cached, replaces what was loaded
// from the disk long ago. It costs one bit per entry and O(1) amortised
// work, with no list to maintain on hits, unlike LRU; a random victim would
// throw hot entries away as readily as cold ones.
//
// Copies of one content beyond MaxCopies (default 8) are not indexed
// either: one verified location is all a reference needs, and a page
// repeated across a disk (a filler pattern, a bitmap) would otherwise fill
// the slab with copies of itself.
//
// An Index is not safe for concurrent use.
package pagecache
