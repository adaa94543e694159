//go:build ceph && cgo

package takeover_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/takeover"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// copyReplica commits the file replica in dir as epoch 1 of vm in dst,
// through the store API: every non-zero chunk of every target as an item,
// and the device state.
func copyReplica(t testing.TB, dir string, dst replica.Store, vm string) {
	t.Helper()
	m, err := replica.DirStore(vfs.Default, dir).Manifest("")
	if err != nil {
		t.Fatal(err)
	}
	dev, err := os.ReadFile(filepath.Join(dir, m.DeviceState.File))
	if err != nil {
		t.Fatal(err)
	}
	type chunk struct {
		target uint16
		off    int64
		n      int
	}
	var chunks []chunk
	b := &wire.EpochBegin{Epoch: 1, Cut: m.Cut, Plan: 1}
	c := &wire.EpochCommit{Epoch: 1}
	files := map[uint16]*os.File{}
	const step = 1 << 20
	buf := make([]byte, step)
	zero := make([]byte, step)
	for i, te := range m.Targets {
		id := uint16(i)
		b.Targets = append(b.Targets, wire.Target{ID: id, Kind: te.TargetKind(), Name: te.Name, Size: uint64(te.Size), BlockSize: uint32(te.BlockSize)})
		c.States = append(c.States, wire.TargetDigest{Target: id, Digest: te.Digest})
		f, err := os.Open(filepath.Join(dir, te.File))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files[id] = f
		for off := int64(0); off < te.Size; off += step {
			n := int(min(step, te.Size-off))
			if _, err := f.ReadAt(buf[:n], off); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:n], zero[:n]) {
				chunks = append(chunks, chunk{id, off, n})
				b.Bytes += uint64(n)
			}
		}
	}
	b.Items, b.Bytes = uint64(len(chunks)+1), b.Bytes+uint64(len(dev))
	h, err := dst.Open(context.Background(), vm, replica.OpenOptions{Holder: "the benchmark"})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Begin(b); err != nil {
		t.Fatal(err)
	}
	dig := wire.NewEpochDigest(1)
	add := func(it wire.Item) {
		if err := h.Append(it); err != nil {
			t.Fatal(err)
		}
		dig.Add(wire.Summarize(it, xxhash.Sum64(wire.DataOf(it))))
	}
	for seq, ch := range chunks {
		data := make([]byte, ch.n)
		if _, err := files[ch.target].ReadAt(data, ch.off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if b.Targets[ch.target].Kind == vmspec.KindRAM {
			add(&wire.MemRun{Seq: uint64(seq), Target: ch.target, Page: uint64(ch.off) / vmspec.PageSize, Data: data})
		} else {
			add(&wire.DiskExtent{Seq: uint64(seq), Target: ch.target, Offset: uint64(ch.off), Data: data})
		}
	}
	add(&wire.DeviceState{Seq: uint64(len(chunks)), Total: uint64(len(dev)), Data: dev})
	if _, err := h.Sync(); err != nil {
		t.Fatal(err)
	}
	c.Items, c.Digest = b.Items, dig.Sum()
	if err := h.Commit(c); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkTakeoverFromRBD: the test guest of 256 MiB and of 1 GiB,
// replicated into files, is copied into a replica store on Ceph RBD (the
// test cluster, one OSD on this host); then, b.N times each, a failover
// from the file replica and from the RBD replica, alternated, each timed
// from the takeover call (prepare included: clones, and RAM read into a
// local file where it is not loaded lazily) until QEMU reports the guest
// running, and for RBD until its RAM is all in (lazy load: the background
// fill's end); then the RBD takeover with Options.CopyRAM (the RAM read
// whole into a local file first). DRSYNC_BENCH_MIB lists the guest sizes (default 256,1024).
func BenchmarkTakeoverFromRBD(b *testing.B) {
	sizes := []int{256, 1024}
	if v := os.Getenv("DRSYNC_BENCH_MIB"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("DRSYNC_BENCH_MIB: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	for _, mem := range sizes {
		b.Run(fmt.Sprintf("%dMiB", mem), func(b *testing.B) {
			r := replicateGuest(b, mem, 1)
			r.src.Kill()
			repl := filepath.Join(r.dir, "replicas", "app-1")
			store := rbdTestStore(b, fmt.Sprintf("bench%d-", time.Now().UnixNano()%1e6), 0)
			t0 := time.Now()
			copyReplica(b, repl, store, "app-1")
			b.Logf("%d MiB guest: replica copied into the pool in %v", mem, time.Since(t0).Round(time.Millisecond))
			disks := []takeover.Disk{{Target: "vda", Node: "disk0"}, {Target: "vdb", Node: "disk1"}}
			var fromFile, fromRBD, prepRBD, residentRBD, fromCopy time.Duration
			load := ""
			for i := range b.N {
				o := takeover.Options{Replica: repl, WorkDir: filepath.Join(r.dir, fmt.Sprintf("file-%d", i)), Disks: disks,
					Args: drArgs(r.kernel, r.initrd, filepath.Join(r.dir, fmt.Sprintf("file-%d.log", i)))}
				t0 := time.Now()
				plan, err := takeover.Prepare(o)
				if err != nil {
					b.Fatal(err)
				}
				vm, err := takeover.Start(context.Background(), plan, nil)
				if err != nil {
					b.Fatal(err)
				}
				fromFile += vm.Running.Sub(t0)
				vm.Stop()

				// A drill's clones: removed after each round, so the next
				// round starts from the same pool.
				o = takeover.Options{Store: store, VM: "app-1", Copy: true, WorkDir: filepath.Join(r.dir, fmt.Sprintf("rbd-%d", i)), Disks: disks,
					Args: drArgs(r.kernel, r.initrd, filepath.Join(r.dir, fmt.Sprintf("rbd-%d.log", i)))}
				t0 = time.Now()
				plan, err = takeover.Prepare(o)
				if err != nil {
					b.Fatal(err)
				}
				prepRBD += time.Since(t0)
				vm, err = takeover.Start(context.Background(), plan, nil)
				if err != nil {
					plan.Discard()
					b.Fatal(err)
				}
				fromRBD += vm.Running.Sub(t0)
				if err := vm.WaitResident(context.Background()); err != nil {
					b.Fatal(err)
				}
				residentRBD += time.Since(t0)
				load = vm.RAMLoad
				qmpQuit(vm)
				if err := plan.Discard(); err != nil {
					b.Fatal(err)
				}
				os.RemoveAll(o.WorkDir)

				// The same with the RAM read whole before QEMU starts.
				o.CopyRAM, o.WorkDir = true, o.WorkDir+"-copy"
				t0 = time.Now()
				if plan, err = takeover.Prepare(o); err != nil {
					b.Fatal(err)
				}
				if vm, err = takeover.Start(context.Background(), plan, nil); err != nil {
					plan.Discard()
					b.Fatal(err)
				}
				fromCopy += vm.Running.Sub(t0)
				qmpQuit(vm)
				if err := plan.Discard(); err != nil {
					b.Fatal(err)
				}
				os.RemoveAll(o.WorkDir)
			}
			n := time.Duration(b.N)
			ms := func(d time.Duration) float64 { return float64((d / n).Microseconds()) / 1000 }
			b.ReportMetric(ms(fromFile), "file-takeover-ms")
			b.ReportMetric(ms(fromRBD), "rbd-takeover-ms")
			b.ReportMetric(ms(prepRBD), "rbd-prepare-ms")
			b.ReportMetric(ms(residentRBD), "rbd-resident-ms")
			b.ReportMetric(ms(fromCopy), "rbd-copy-takeover-ms")
			b.Logf("%d MiB guest: takeover until running %v from files, %v from RBD (RAM %s; of which prepare %v), RAM all in %v after the takeover began; %v from RBD with the RAM read whole first",
				mem, (fromFile / n).Round(time.Millisecond), (fromRBD / n).Round(time.Millisecond), load, (prepRBD / n).Round(time.Millisecond), (residentRBD / n).Round(time.Millisecond), (fromCopy / n).Round(time.Millisecond))
		})
	}
}

// qmpQuit asks QEMU to quit, which closes its RBD images (a killed one's
// keep its clones from removal until its watch expires), and kills it if
// it does not within 5 s.
func qmpQuit(vm *takeover.VM) {
	if sess, err := qmp.Dial(context.Background(), vm.Plan.QMP, qmp.Options{}); err == nil {
		sess.Execute(context.Background(), "quit", nil, nil)
		sess.Close()
	}
	select {
	case <-vm.Exited():
	case <-time.After(5 * time.Second):
		vm.Stop()
	}
}
