package pagecache

import (
	"encoding/binary"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// randomBytes returns n reproducible random bytes.
func randomBytes(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// stamp makes every page of b unique: its first 8 bytes become (gen,
// page number).
func stamp(b []byte, gen uint64) {
	for o := 0; o+PageSize <= len(b); o += PageSize {
		binary.LittleEndian.PutUint64(b[o:], gen<<32|uint64(o/PageSize))
	}
}

// hashPages is the baseline: xxhash64 of every page of b.
func hashPages(b []byte) (s uint64) {
	for o := 0; o+PageSize <= len(b); o += PageSize {
		s += xxhash.Sum64(b[o : o+PageSize])
	}
	return s
}

var sink uint64

// vsXXHash compares an operation with the baseline, xxhash of the same
// bytes page by page, run right after it in each iteration so that both
// see the same machine load.
type vsXXHash struct {
	op, base time.Duration
	bytes    float64
}

// run times f, which processes the bytes of buf reps times, then the
// baseline over the same bytes.
func (v *vsXXHash) run(buf []byte, reps int, f func()) {
	t0 := time.Now()
	f()
	t1 := time.Now()
	for range reps {
		sink += hashPages(buf)
	}
	v.op += t1.Sub(t0)
	v.base += time.Since(t1)
	v.bytes += float64(len(buf)) * float64(reps)
}

// report states both throughputs and their ratio (ns/op covers both).
func (v *vsXXHash) report(b *testing.B) {
	b.ReportMetric(v.bytes/1e6/v.op.Seconds(), "op-MB/s")
	b.ReportMetric(v.bytes/1e6/v.base.Seconds(), "xxhash-MB/s")
	b.ReportMetric(v.base.Seconds()/v.op.Seconds(), "vs-xxhash")
}

// fillIndex indexes n unique pages (one target) through Update, a page at
// a time, with a cheap hash when fast is set.
func fillIndex(tb testing.TB, x *Index, n int) {
	p := randomBytes(PageSize)
	for i := range n {
		binary.LittleEndian.PutUint64(p, uint64(i)+1)
		x.Update(0, int64(i)*PageSize, p)
	}
	if x.Len() != n {
		tb.Fatalf("filled %d pages, Len %d", n, x.Len())
	}
}

func first8(p []byte) uint64 { return binary.LittleEndian.Uint64(p) }

// measurePerGiB indexes one GiB worth of distinct pages (262,144) and
// returns what the index holds: its heap, by runtime.MemStats, and the
// memory it mapped outside the heap.
func measurePerGiB(tb testing.TB) (measured uint64, estimate int) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x, err := New(Options{MaxEntries: PagesPerGiB, Hash: first8}) // the hash does not change the layout
	if err != nil {
		tb.Fatal(err)
	}
	fillIndex(tb, x, PagesPerGiB)
	runtime.GC()
	runtime.ReadMemStats(&after)
	estimate = x.MemoryBytes()
	runtime.KeepAlive(x)
	return after.HeapAlloc - before.HeapAlloc + uint64(x.mem.Bytes), estimate
}

// TestMemoryPerGiB checks the stated cost (doc.go, BytesPerGiB) against
// the memory an index of a GiB of pages really holds, and MemoryBytes
// against both.
func TestMemoryPerGiB(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a GiB worth of pages")
	}
	got, est := measurePerGiB(t)
	t.Logf("stated %d B/GiB (%.1f B/page), measured %d B (%.1f B/page), MemoryBytes %d", BytesPerGiB, float64(BytesPerGiB)/PagesPerGiB, got, float64(got)/PagesPerGiB, est)
	if r := float64(got) / BytesPerGiB; r < 0.97 || r > 1.05 {
		t.Errorf("measured %d bytes per GiB, %.3f× the stated %d", got, r, BytesPerGiB)
	}
	if r := float64(est) / float64(got); r < 0.97 || r > 1.03 {
		t.Errorf("MemoryBytes %d is %.3f× the measured %d", est, r, got)
	}
}

func BenchmarkMemoryPerGiB(b *testing.B) {
	var got uint64
	for b.Loop() {
		got, _ = measurePerGiB(b)
	}
	b.ReportMetric(float64(got), "B/GiB")
	b.ReportMetric(float64(BytesPerGiB), "stated-B/GiB")
	b.ReportMetric(float64(got)/PagesPerGiB, "B/page")
}

// BenchmarkUpdate reports Update's throughput on 4 MiB writes (op-MB/s)
// and its ratio to hashing the same bytes with xxhash alone (vs-xxhash):
//
//	new:       unique pages into a full index: insert, evict
//	overwrite: new content over indexed pages: drop, insert
//	same:      indexed pages rewritten unchanged: hash, location lookup
func BenchmarkUpdate(b *testing.B) {
	const chunk = 4 << 20
	const pagesPerChunk = chunk / PageSize
	for _, mode := range []string{"new", "overwrite", "same"} {
		b.Run(mode, func(b *testing.B) {
			x, err := New(Options{MaxEntries: 1 << 20})
			if err != nil {
				b.Fatal(err)
			}
			buf := randomBytes(chunk)
			// Fill the index first so every mode runs in steady state.
			for i := range (1 << 20) / pagesPerChunk {
				stamp(buf, uint64(i))
				x.Update(0, int64(i)*chunk, buf)
			}
			gen := uint64(1 << 20)
			var v vsXXHash
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var off int64
				switch mode {
				case "new":
					gen++
					stamp(buf, gen)
					off = int64(gen) * chunk
				case "overwrite":
					gen++
					stamp(buf, gen)
					off = int64(i%64) * chunk
				case "same":
					off = int64(1<<20/pagesPerChunk-1) * chunk
				}
				v.run(buf, 1, func() { x.Update(1, off, buf) })
			}
			v.report(b)
		})
	}
}

// BenchmarkLoadTarget reports the first-pass build of a 256 MiB target
// (op-MB/s) and its ratio to hashing the same bytes with xxhash alone
// (vs-xxhash).
func BenchmarkLoadTarget(b *testing.B) {
	const size = 256 << 20
	src := randomBytes(1 << 20)
	x, err := New(Options{MaxEntries: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	gen := uint64(0)
	read := func(off int64, buf []byte) error {
		if off == 0 {
			copy(buf, src) // the chunk buffer is reused: copy once, restamp after
		}
		gen++
		stamp(buf, gen)
		return nil
	}
	var v vsXXHash
	for b.Loop() {
		v.run(src, size/len(src), func() {
			if err := x.LoadTarget(3, size, read); err != nil {
				b.Fatal(err)
			}
		})
	}
	if x.Len() != size/PageSize {
		b.Fatalf("Len %d", x.Len())
	}
	v.report(b)
}

// genReader is a PageReader over a synthetic disk: page p is base stamped
// with p+1.
type genReader struct{ base []byte }

func (g genReader) ReadPage(loc Loc, buf []byte) error {
	copy(buf, g.base)
	binary.LittleEndian.PutUint64(buf, uint64(loc.Off/PageSize)+1)
	return nil
}

var findIndex = sync.OnceValue(func() *Index {
	x, err := New(Options{MaxEntries: 1 << 20})
	if err != nil {
		panic(err)
	}
	p := randomBytes(PageSize)
	for i := range 1 << 20 {
		binary.LittleEndian.PutUint64(p, uint64(i)+1)
		x.Update(0, int64(i)*PageSize, p)
	}
	return x
})

// BenchmarkFind reports Find's latency on an index of 2^20 pages (4 GiB
// of disk): a hit hashes, looks up, reads 4 KiB through the reader and
// compares; a miss hashes and looks up.
func BenchmarkFind(b *testing.B) {
	x := findIndex()
	base := randomBytes(PageSize)
	r := genReader{base}
	page := make([]byte, PageSize)
	copy(page, base)
	rng := rand.New(rand.NewPCG(3, 4))
	b.Run("hit", func(b *testing.B) {
		for b.Loop() {
			binary.LittleEndian.PutUint64(page, rng.Uint64N(1<<20)+1)
			if _, ok, _ := x.Find(page, r); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		for b.Loop() {
			binary.LittleEndian.PutUint64(page, 1<<21+rng.Uint64N(1<<40))
			if _, ok, _ := x.Find(page, r); ok {
				b.Fatal("hit")
			}
		}
	})
	b.Run("hit-known-hash", func(b *testing.B) {
		// FindHash with the RAM table's page hash: no hashing of the page.
		hs := make([]uint64, 1024)
		for i := range hs {
			binary.LittleEndian.PutUint64(page, uint64(i*997)+1)
			hs[i] = xxhash.Sum64(page)
		}
		i := 0
		for b.Loop() {
			binary.LittleEndian.PutUint64(page, uint64(i*997)+1)
			if _, ok, _ := x.FindHash(hs[i], page, r); !ok {
				b.Fatal("miss")
			}
			i = (i + 1) % len(hs)
		}
	})
}

func BenchmarkDups(b *testing.B) {
	hs := make([]uint64, 1<<20) // 4 GiB of RAM, a tenth of it duplicated
	r := rand.New(rand.NewPCG(5, 6))
	for i := range hs {
		if i > 0 && r.IntN(10) == 0 {
			hs[i] = hs[r.IntN(i)]
		} else {
			hs[i] = r.Uint64()
		}
	}
	for b.Loop() {
		Dups(hs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(hs)), "ns/hash")
}
