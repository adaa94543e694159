//go:build ceph && cgo

package rbdstore_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// applyEpoch is one epoch as a sender sends it: scattered disk extents.
type applyEpoch struct {
	begin  *wire.EpochBegin
	items  []wire.Item
	commit *wire.EpochCommit
}

// Sizes of BenchmarkStoreApply: a 1 GiB disk in the sender's default
// 64 KiB blocks, epochs of DRSYNC_BENCH_EPOCH_MIB (64) MiB of 256 KiB
// extents, synced every 4 MiB as a receiver does at its default ack_every.
const (
	benchDisk   = 1 << 30
	benchBlock  = 64 << 10
	benchExtent = 256 << 10
	benchAck    = 4 << 20
)

// nextApplyEpoch makes epoch e of size bytes over the disk whose block
// table tab is (updated to the epoch's).
func nextApplyEpoch(e uint64, size int, tab *blockhash.Table, rng *rand.Rand) *applyEpoch {
	items := make([]wire.Item, 0, size/benchExtent)
	b := &wire.EpochBegin{Epoch: e, Cut: time.Unix(1_700_000_000+int64(e)*60, 0).UTC(), Plan: e,
		Targets: []wire.Target{{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: benchDisk, BlockSize: benchBlock}}}
	dig := wire.NewEpochDigest(e)
	for i := range size / benchExtent {
		d := make([]byte, benchExtent)
		for j := 0; j < len(d); j += 8 {
			v := rng.Uint64()
			for k := range 8 {
				d[j+k] = byte(v >> (8 * k))
			}
		}
		off := uint64(rng.IntN(benchDisk/benchExtent)) * benchExtent
		for bl := range benchExtent / benchBlock {
			tab.Hashes[int(off)/benchBlock+bl] = blockhash.Hash(d[bl*benchBlock : (bl+1)*benchBlock])
		}
		it := &wire.DiskExtent{Seq: uint64(i), Target: 0, Offset: off, Data: d}
		items = append(items, it)
		b.Bytes += uint64(len(d))
		dig.Add(wire.Summarize(it, xxhash.Sum64(d)))
	}
	b.Items = uint64(len(items))
	c := &wire.EpochCommit{Epoch: e, Items: b.Items, Digest: dig.Sum(), States: []wire.TargetDigest{{Target: 0, Digest: tab.Digest()}}}
	return &applyEpoch{begin: b, items: items, commit: c}
}

// BenchmarkStoreApply stages and commits an epoch through replica.Store
// (Begin, Append, a Sync every 4 MiB, Commit: the journal, the commit
// record, the apply to the image, the new manifest) into the RBD store on
// the test cluster and into the file store on the local disk, in the same
// run; each keeps one recovery point, as a receiver with keep_points = 1.
// MB/s is the epoch's data per second from Begin to Commit's return.
func BenchmarkStoreApply(b *testing.B) {
	size := 64 << 20
	if s := os.Getenv("DRSYNC_BENCH_EPOCH_MIB"); s != "" {
		mib, err := strconv.Atoi(s)
		if err != nil || mib <= 0 {
			b.Fatalf("DRSYNC_BENCH_EPOCH_MIB=%q: want a positive number of MiB", s)
		}
		size = mib << 20
	}
	stores := []struct {
		name string
		open func(b *testing.B) replica.Store
	}{
		{"file", func(b *testing.B) replica.Store {
			return replica.FileStore{FS: vfs.Default, Root: b.TempDir(), Now: time.Now, KeepPoints: 1}
		}},
		{"rbd", func(b *testing.B) replica.Store {
			s := &rbdstore.Store{Pool: sharedPool(b), Prefix: fmt.Sprintf("bench%d-", backends.Add(1)), Now: time.Now, KeepPoints: 1}
			b.Cleanup(func() { removeAll(b, s) })
			return s
		}},
	}
	for _, st := range stores {
		b.Run(fmt.Sprintf("%s/%dMiB", st.name, size>>20), func(b *testing.B) {
			s := st.open(b)
			h, err := s.Open(b.Context(), "web-1", replica.OpenOptions{Holder: "the benchmark"})
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			tab := blockhash.NewZero(benchDisk, benchBlock)
			rng := rand.New(rand.NewPCG(1, 2))
			b.SetBytes(int64(size))
			var stage, commit time.Duration
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				ep := nextApplyEpoch(uint64(i+1), size, tab, rng)
				b.StartTimer()
				t0 := time.Now()
				if err := h.Begin(ep.begin); err != nil {
					b.Fatal(err)
				}
				for j, it := range ep.items {
					if err := h.Append(it); err != nil {
						b.Fatal(err)
					}
					if (j+1)*benchExtent%benchAck == 0 {
						if _, err := h.Sync(); err != nil {
							b.Fatal(err)
						}
					}
				}
				if _, err := h.Sync(); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := h.Commit(ep.commit); err != nil {
					b.Fatalf("epoch %d: %v", i+1, err)
				}
				stage, commit = stage+t1.Sub(t0), commit+time.Since(t1)
			}
			b.ReportMetric(stage.Seconds()/float64(b.N), "stage-s/op")
			b.ReportMetric(commit.Seconds()/float64(b.N), "commit-s/op")
		})
	}
}

// removeAll removes the images and objects a benchmark's store left in
// the shared pool: its VM's images (with their snapshots) by name; the
// RADOS objects are small and the cluster is the test binary's.
func removeAll(b *testing.B, s *rbdstore.Store) {
	names, err := s.Pool.ListImages()
	if err != nil {
		b.Log(err)
		return
	}
	for _, n := range names {
		if len(n) < len(s.Prefix) || n[:len(s.Prefix)] != s.Prefix {
			continue
		}
		if im, err := s.Pool.OpenImage(n, ""); err == nil {
			snaps, _ := im.Snaps()
			for _, sn := range snaps {
				im.RemoveSnap(sn.Name)
			}
			im.Close()
		}
		s.Pool.RemoveImage(n)
	}
}
