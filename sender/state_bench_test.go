package sender

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/vfs"
)

// BenchmarkRecordEpoch: recording one steady epoch of a VM whose RAM
// table is that of a large guest (DRSYNC_BENCH_INDEX_GIB, default 16 GiB)
// after 1,000 pages were written, on this machine's disk: whole index
// files (pending written whole, then committed written whole: how the
// sender recorded every epoch before deltas) against a delta and a rename,
// in the same run. Reports the bytes written and the time per epoch.
func BenchmarkRecordEpoch(b *testing.B) {
	gib := int64(16)
	if v := os.Getenv("DRSYNC_BENCH_INDEX_GIB"); v != "" {
		fmt.Sscan(v, &gib)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	base := &Index{Epoch: 1, Tables: map[string]*blockhash.Table{"ram/pc.ram": blockhash.NewZero(gib<<30, 4096)}}
	for i := range base.Tables["ram/pc.ram"].Hashes {
		base.Tables["ram/pc.ram"].Hashes[i] = rng.Uint64()
	}
	base.StateID = base.ComputeStateID()
	next := func(prev *Index) *Index {
		t := prev.Tables["ram/pc.ram"].Clone()
		for range 1000 {
			t.Hashes[rng.IntN(len(t.Hashes))] = rng.Uint64()
		}
		x := &Index{Epoch: prev.Epoch + 1, Tables: map[string]*blockhash.Table{"ram/pc.ram": t}}
		x.StateID = x.ComputeStateID()
		return x
	}
	var perEpoch [2]time.Duration
	var written [2]int64
	for i, mode := range []string{"whole", "delta"} {
		b.Run(mode, func(b *testing.B) {
			st := Store{FS: vfs.Default, Dir: filepath.Join(b.TempDir(), "s")}
			if err := st.Promote(base); err != nil {
				b.Fatal(err)
			}
			committed := base
			var bytes int64
			var took time.Duration
			for b.Loop() {
				b.StopTimer()
				x := next(committed)
				b.StartTimer()
				start := time.Now()
				if mode == "whole" {
					if err := st.SavePending(x, nil); err != nil {
						b.Fatal(err)
					}
					if err := st.Promote(x); err != nil {
						b.Fatal(err)
					}
					bytes += 2 * indexLen(x)
				} else {
					if err := st.SavePending(x, committed); err != nil {
						b.Fatal(err)
					}
					if fi, err := os.Stat(filepath.Join(st.Dir, pendingName)); err == nil {
						bytes += fi.Size()
					}
					before, _ := st.deltas()
					if err := st.PromotePending(x); err != nil {
						b.Fatal(err)
					}
					if after, _ := st.deltas(); len(after) < len(before) {
						bytes += indexLen(x) // compacted
					}
				}
				took += time.Since(start)
				committed = x
			}
			perEpoch[i], written[i] = took/time.Duration(b.N), bytes/int64(b.N)
			b.ReportMetric(float64(written[i]), "bytes/epoch")
		})
	}
	if perEpoch[0] > 0 && perEpoch[1] > 0 {
		b.Logf("%d GiB guest, 1000 pages written: whole %v and %d bytes per epoch; delta %v and %d bytes (amortized, compactions included): %.3f× the time, %.4f× the bytes",
			gib, perEpoch[0], written[0], perEpoch[1], written[1], float64(perEpoch[1])/float64(perEpoch[0]), float64(written[1])/float64(written[0]))
	}
}
