package livecut_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/wire"
)

func medianOf(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// qemuFloor is QEMU's own cost of the same cut: a migration at the same
// bandwidth into /dev/null, which parses nothing and keeps nothing.
func qemuFloor(b *testing.B, sock string) (total, downtime time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := qmp.Dial(ctx, sock, qmp.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(10 << 30)}, nil); err != nil {
		b.Fatal(err)
	}
	var totals, downs []time.Duration
	for range 3 {
		if err := s.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > /dev/null"}, nil); err != nil {
			b.Fatal(err)
		}
		var mig struct {
			Status    string
			TotalTime int64 `json:"total-time"`
			Downtime  int64
		}
		for mig.Status != "completed" {
			time.Sleep(5 * time.Millisecond)
			if err := s.Execute(ctx, "query-migrate", nil, &mig); err != nil {
				b.Fatal(err)
			}
			if mig.Status == "failed" {
				b.Fatal("baseline migration failed")
			}
		}
		if err := s.Execute(ctx, "cont", nil, nil); err != nil {
			b.Fatal(err)
		}
		totals = append(totals, time.Duration(mig.TotalTime)*time.Millisecond)
		downs = append(downs, time.Duration(mig.Downtime)*time.Millisecond)
		time.Sleep(300 * time.Millisecond)
	}
	return medianOf(totals), medianOf(downs)
}

// BenchmarkLiveEpoch replicates a running guest of 256 MiB and of 1 GiB,
// one epoch per iteration, into an in-memory replica. It reports per epoch:
// capture time (migrate issued until the stream is parsed), the guest's
// pause, the sender process's CPU time for the whole epoch (capture, plan,
// encode; the in-process receiver's apply included), and as baselines
// QEMU's own migration of the same guest into /dev/null.
func BenchmarkLiveEpoch(b *testing.B) {
	for _, mem := range []int{256, 1024} {
		b.Run(fmt.Sprintf("%dMiB", mem), func(b *testing.B) {
			hosttools.Need(b, "qemu-system-x86_64", "qemu-img")
			guest.Build(b)
			dir := hosttools.ShortTempDir(b, "lb")
			raw := filepath.Join(dir, "vda.raw")
			hosttools.Run(b, "qemu-img", "create", "-q", "-f", "raw", raw, "256M")
			vm := guest.Launch(b, guest.Options{MemMiB: mem, Disks: []guest.Disk{{Path: raw}}})
			if _, err := vm.WaitTicks(10, 3*time.Minute); err != nil {
				b.Fatal(err)
			}
			floor, floorDown := qemuFloor(b, vm.QMPSocket)
			rcv, err := receiver.New(receiver.Options{Root: "/r", FS: memfs.New(), AckBytes: 16 << 20, Now: time.Now,
				Authorize: func(receiver.Peer, string) error { return nil }})
			if err != nil {
				b.Fatal(err)
			}
			src, err := livecut.New(livecut.Options{QMPSocket: vm.QMPSocket, WorkDir: filepath.Join(dir, "work"), Now: time.Now,
				Disks: []livecut.Disk{{Name: "vda", Node: "disk0"}}})
			if err != nil {
				b.Fatal(err)
			}
			defer src.Close()
			snd, err := sender.New(sender.Options{VM: "bench", Source: src, Dialer: testkit.PipeDialer(rcv, receiver.Peer{Fingerprint: "sha256:aa"}),
				Store: sender.Store{FS: memfs.New(), Dir: "/s"}, Compression: wire.CompressFast, Now: time.Now})
			if err != nil {
				b.Fatal(err)
			}
			defer snd.Close()
			// The first epoch sends everything; the benchmark measures the
			// steady state after it.
			if _, err := snd.RunEpoch(context.Background()); err != nil {
				b.Fatal(err)
			}
			var captures, pauses, cpus, freezes []time.Duration
			var wire, stream int64
			b.ResetTimer()
			for range b.N {
				c0 := hosttools.SelfCPU()
				res, err := snd.RunEpoch(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				cpus = append(cpus, hosttools.SelfCPU()-c0)
				st := src.LastCut()
				captures = append(captures, st.Capture)
				freezes = append(freezes, st.Freeze)
				pauses = append(pauses, res.Pause)
				wire += int64(res.WireBytes)
				stream += st.StreamBytes
				time.Sleep(200 * time.Millisecond) // let the guest dirty some memory
			}
			b.StopTimer()
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			b.ReportMetric(ms(medianOf(captures)), "capture-ms")
			b.ReportMetric(ms(medianOf(pauses)), "pause-ms")
			b.ReportMetric(ms(medianOf(freezes)), "freeze-ms")
			b.ReportMetric(ms(medianOf(cpus)), "cpu-ms/epoch")
			b.ReportMetric(ms(floor), "qemu-migrate-ms")
			b.ReportMetric(ms(floorDown), "qemu-downtime-ms")
			b.ReportMetric(float64(medianOf(captures))/float64(floor), "capture/qemu-migrate")
			b.ReportMetric(float64(wire)/float64(stream), "wire/qemu-stream")
			b.Logf("%d MiB guest: capture %v (QEMU's own migration to /dev/null %v, ratio %.2f), pause median %v max %v (QEMU downtime alone %v), sender CPU %v per epoch, wire bytes %.4f of QEMU's stream",
				mem, medianOf(captures).Round(time.Millisecond), floor, float64(medianOf(captures))/float64(floor),
				medianOf(pauses).Round(100*time.Microsecond), slices.Max(pauses).Round(100*time.Microsecond), floorDown, medianOf(cpus).Round(time.Millisecond), float64(wire)/float64(stream))
		})
	}
}
