//go:build ceph && cgo

package rbd_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/testkit"
)

// writerAt is what an epoch's apply needs of its target: an RBD image or
// a file.
type writerAt interface {
	WriteAt(p []byte, off int64) (int, error)
}

// BenchmarkApply writes an epoch's worth of scattered 256 KiB extents
// (64 MiB) into a 1 GiB target and makes it durable: into an RBD image
// (then a snapshot: the recovery point), and into a sparse file on the
// local disk (then fsync), in the same run.
func BenchmarkApply(b *testing.B) {
	const size, extent, epoch = 1 << 30, 256 << 10, 64 << 20
	data := make([]byte, extent)
	for i := range data {
		data[i] = byte(i * 7)
	}
	// run writes each epoch from writers goroutines: librbd takes
	// concurrent writes, and one writer waits out every round trip.
	run := func(b *testing.B, w writerAt, writers int, durable func(i int) error) {
		b.SetBytes(epoch)
		b.ResetTimer()
		for i := range b.N {
			errs := make(chan error, writers)
			for g := range writers {
				go func() {
					rng := rand.New(rand.NewPCG(uint64(i), uint64(g)))
					for range epoch / extent / writers {
						if _, err := w.WriteAt(data, int64(rng.IntN(size/extent))*extent); err != nil {
							errs <- err
							return
						}
					}
					errs <- nil
				}()
			}
			for range writers {
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			}
			if err := durable(i); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, writers := range []int{1, 8} {
		b.Run(fmt.Sprintf("rbd/writers=%d", writers), func(b *testing.B) {
			c := testkit.CephCluster(b)
			conn, err := rbd.Connect(rbd.Config{ConfFile: c.Conf, Client: c.Client})
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			p, err := conn.OpenPool(c.Pool)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			name := fmt.Sprintf("bench-%d", time.Now().UnixNano())
			if err := p.CreateImage(name, size); err != nil {
				b.Fatal(err)
			}
			defer p.RemoveImage(name)
			im, err := p.OpenImage(name, "")
			if err != nil {
				b.Fatal(err)
			}
			defer func() {
				snaps, _ := im.Snaps()
				for _, s := range snaps {
					im.RemoveSnap(s.Name)
				}
				im.Close()
			}()
			var snap time.Duration
			run(b, im, writers, func(i int) error {
				if err := im.Flush(); err != nil {
					return err
				}
				t0 := time.Now()
				err := im.CreateSnap(fmt.Sprintf("e%d", i))
				snap += time.Since(t0)
				return err
			})
			b.ReportMetric(float64(snap.Microseconds())/1000/float64(b.N), "ms-snap/op")
		})
	}
	b.Run("file", func(b *testing.B) {
		f, err := os.Create(filepath.Join(b.TempDir(), "disk.img"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(size); err != nil {
			b.Fatal(err)
		}
		run(b, f, 1, func(int) error { return f.Sync() })
	})
}
