package livecut_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/wire"
)

// BenchmarkTrackedEpoch replicates one running guest of 512 MiB whose RAM
// is a shared memfd backend, 320 MiB of it random data the guest keeps
// rewriting (256 pages a second), first with every cut migrating all of
// RAM (full), then with RAM tracking (tracked), one epoch per iteration
// after a first full one, into an in-memory replica. Per epoch: the
// sender process's CPU time (capture, plan, encode; the in-process
// receiver's apply included), capture time, the guest's pause, the pages
// the tracked path copied, QEMU's stream bytes.
func BenchmarkTrackedEpoch(b *testing.B) {
	const mib = 512
	hosttools.Need(b, "qemu-system-x86_64", "qemu-img")
	guest.Build(b)
	dir := hosttools.ShortTempDir(b, "tb")
	raw := filepath.Join(dir, "vda.raw")
	hosttools.Run(b, "qemu-img", "create", "-q", "-f", "raw", raw, "64M")
	vm := guest.Launch(b, guest.Options{MemMiB: mib, Disks: []guest.Disk{{Path: raw}},
		Args:          map[string]string{"dirty_mib": "320", "dirty_rate_kib": "1024"},
		ExtraQEMUArgs: sharedRAMArgs(mib)})
	if _, err := vm.WaitTicks(10, 5*time.Minute); err != nil {
		b.Fatal(err)
	}
	for _, path := range []string{livecut.RAMFull, livecut.RAMTracked} {
		b.Run(path, func(b *testing.B) {
			o := livecut.Options{QMPSocket: vm.QMPSocket, WorkDir: filepath.Join(dir, "work-"+path), Now: time.Now,
				Disks: []livecut.Disk{{Name: "vda", Node: "disk0"}}}
			if path == livecut.RAMTracked {
				o.SharedRAM = "ram0"
				o.TrackRAM = func() (livecut.RAMTracker, error) { return dirtylog.TrackGuest(vm.Pid, mib<<20) }
			}
			src, err := livecut.New(o)
			if err != nil {
				b.Fatal(err)
			}
			defer src.Close()
			rcv, err := receiver.New(receiver.Options{Root: "/r", FS: memfs.New(), AckBytes: 16 << 20, Now: time.Now,
				Authorize: func(receiver.Peer, string) error { return nil }})
			if err != nil {
				b.Fatal(err)
			}
			snd, err := sender.New(sender.Options{VM: "bench", Source: src, Dialer: testkit.PipeDialer(rcv, receiver.Peer{Fingerprint: "sha256:aa"}),
				Store: sender.Store{FS: memfs.New(), Dir: "/s"}, Compression: wire.CompressFast, Now: time.Now})
			if err != nil {
				b.Fatal(err)
			}
			defer snd.Close()
			if _, err := snd.RunEpoch(context.Background()); err != nil {
				b.Fatal(err)
			}
			var cpus, captures, pauses, scans []time.Duration
			var dirty, stream int64
			b.ResetTimer()
			for range b.N {
				time.Sleep(time.Second) // the guest dirties ~256 pages
				c0 := hosttools.SelfCPU()
				res, err := snd.RunEpoch(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				cpus = append(cpus, hosttools.SelfCPU()-c0)
				st := src.LastCut()
				if st.RAMPath != path {
					b.Fatalf("an epoch took the %s path, want %s", st.RAMPath, path)
				}
				captures = append(captures, st.Capture)
				pauses = append(pauses, res.Pause)
				scans = append(scans, st.Scan)
				dirty += int64(st.DirtyPages)
				stream += st.StreamBytes
			}
			b.StopTimer()
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			b.ReportMetric(ms(medianOf(cpus)), "cpu-ms/epoch")
			b.ReportMetric(ms(medianOf(captures)), "capture-ms")
			b.ReportMetric(ms(medianOf(pauses)), "pause-ms")
			b.ReportMetric(float64(stream)/float64(b.N), "stream-B/epoch")
			b.Logf("%s: %d MiB guest, sender CPU %v per epoch (median, max %v), capture %v, pause %v (max %v), scan+copy %v, %.0f dirty pages per epoch, QEMU stream %.1f MB per epoch",
				path, mib, medianOf(cpus).Round(time.Millisecond), slices.Max(cpus).Round(time.Millisecond),
				medianOf(captures).Round(time.Millisecond), medianOf(pauses).Round(100*time.Microsecond), slices.Max(pauses).Round(100*time.Microsecond),
				medianOf(scans).Round(10*time.Microsecond), float64(dirty)/float64(b.N), float64(stream)/float64(b.N)/1e6)
		})
	}
}
