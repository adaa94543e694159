package takeover_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/migstream"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/takeover"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/warmset"
)

// waitTicks returns when the serial log holds n TICK lines.
func waitTicks(b *testing.B, path string, n int) time.Time {
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if data, _ := os.ReadFile(path); len(guest.ParseTicks(data)) >= n {
			return time.Now()
		}
	}
	b.Fatalf("%s: fewer than %d ticks", path, n)
	return time.Time{}
}

// fullStream writes the alternative takeover: one migration stream with
// every RAM page of the replica, loaded into anonymous guest memory.
func fullStream(b *testing.B, repl, path string) {
	m, err := replica.DirStore(vfs.Default, repl).Manifest("")
	if err != nil {
		b.Fatal(err)
	}
	sk, err := migstream.ParseSkeleton(mustReadB(b, filepath.Join(repl, m.DeviceState.File)))
	if err != nil {
		b.Fatal(err)
	}
	ram := make([]io.ReaderAt, len(sk.Blocks))
	for i, blk := range sk.Blocks {
		if t := m.RAM(blk.ID); t != nil {
			f, err := os.Open(filepath.Join(repl, t.File))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			ram[i] = f
		}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if err := migstream.WriteStream(w, sk, ram); err != nil {
		b.Fatal(err)
	}
	w.Flush()
	f.Close()
}

func mustReadB(b *testing.B, path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkTakeover brings a replicated guest of 256 MiB and of 1 GiB up at
// the DR site, b.N times, and reports the time from the takeover call
// (prepare included) to the guest running, and from running until the
// guest's workload has printed 10 ticks (its normal rate is one per 50 ms).
// Baseline in the same run: the other way QEMU can take the state, one
// stream with every RAM page loaded into anonymous memory.
func BenchmarkTakeover(b *testing.B) {
	for _, mem := range []int{256, 1024} {
		b.Run(fmt.Sprintf("%dMiB", mem), func(b *testing.B) {
			r := replicateGuest(b, mem, 1)
			r.src.Kill()
			repl := filepath.Join(r.dir, "replicas", "app-1")
			disks := []takeover.Disk{{Target: "vda", Node: "disk0"}, {Target: "vdb", Node: "disk1"}}
			var took, workload time.Duration
			for i := range b.N {
				serial := filepath.Join(r.dir, fmt.Sprintf("dr-%d.log", i))
				t0 := time.Now()
				// A work directory per takeover: Prepare never replaces the
				// overlays the previous guest wrote to.
				plan, err := takeover.Prepare(takeover.Options{Replica: repl, WorkDir: filepath.Join(r.dir, fmt.Sprintf("dr-%d", i)), Args: drArgs(r.kernel, r.initrd, serial), Disks: disks})
				if err != nil {
					b.Fatal(err)
				}
				vm, err := takeover.Start(context.Background(), plan, nil)
				if err != nil {
					b.Fatal(err)
				}
				took += vm.Running.Sub(t0)
				workload += waitTicks(b, serial, 10).Sub(vm.Running)
				vm.Stop()
			}

			// The alternative: a full stream, no -mem-path.
			b.StopTimer()
			dir := hosttools.ShortTempDir(b, "fs")
			stream := filepath.Join(dir, "full.mig")
			fullStream(b, repl, stream)
			st, _ := os.Stat(stream)
			plan, err := takeover.Prepare(takeover.Options{Replica: repl, WorkDir: filepath.Join(dir, "w"), Args: drArgs(r.kernel, r.initrd, filepath.Join(dir, "s.log")), Disks: disks})
			if err != nil {
				b.Fatal(err)
			}
			var args []string
			for i := 1; i < len(plan.Command); i++ {
				switch a := plan.Command[i]; {
				case a == "-mem-path":
					i++
				case strings.HasPrefix(a, "exec:cat"):
					args = append(args, "exec:cat "+stream)
				default:
					args = append(args, a)
				}
			}
			t0 := time.Now()
			cmd := exec.Command(plan.Command[0], args...)
			exited := hosttools.StartProcess(b, cmd)
			hosttools.WaitSocket(b, plan.QMP, exited, 30*time.Second, func() string { return "" })
			sess, err := qmp.Dial(context.Background(), plan.QMP, qmp.Options{})
			if err != nil {
				b.Fatal(err)
			}
			for {
				var s struct{ Status string }
				if err := sess.Execute(context.Background(), "query-status", nil, &s); err != nil {
					b.Fatal(err)
				}
				if s.Status == "running" {
					break
				}
				time.Sleep(time.Millisecond)
			}
			full := time.Since(t0)
			sess.Close()

			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			b.ReportMetric(ms(took/time.Duration(b.N)), "takeover-ms")
			b.ReportMetric(ms(workload/time.Duration(b.N)), "to-10-ticks-ms")
			b.ReportMetric(ms(full), "full-stream-ms")
			b.ReportMetric(float64(took/time.Duration(b.N))/float64(full), "takeover/full-stream")
			b.Logf("%d MiB guest: takeover (prepare + QEMU start + load) %v until running, then %v to 10 workload ticks (500 ms of ticks at the normal rate); a full %d-byte stream into anonymous memory takes %v",
				mem, (took / time.Duration(b.N)).Round(time.Millisecond), (workload / time.Duration(b.N)).Round(time.Millisecond), st.Size(), full.Round(time.Millisecond))
		})
	}
}

// dropCaches writes dirty data back and empties the page cache, as if the
// DR host's memory had been used for other things since the last epoch.
func dropCaches(b *testing.B) {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		b.Skipf("cannot drop the page cache (needs root): %v", err)
	}
}

// BenchmarkTakeoverColdStorage shows what the warm set buys: the replica's
// page cache is dropped before each takeover, once with the receiver's hot
// pages pinned (warmset.Keeper, as drsync receive runs it) and once
// without. Reported: command to guest running, and running to the
// workload's 10th tick.
func BenchmarkTakeoverColdStorage(b *testing.B) {
	keeper := warmset.NewKeeper(warmset.Options{}, nil)
	var hot int64
	r := replicateGuestWith(b, 256, 6, func(s receiver.EpochStats) {
		var blocks []warmset.BlockEpoch
		for _, ram := range s.RAM {
			be := warmset.BlockEpoch{Name: ram.Name, File: ram.File, Size: ram.Size}
			for _, w := range ram.Written {
				be.Written = append(be.Written, warmset.Run{First: w.First, Count: w.Count})
			}
			blocks = append(blocks, be)
		}
		hot = keeper.Commit(s.VM, blocks)
	})
	keeper.Flush()
	r.src.Kill()
	repl := filepath.Join(r.dir, "replicas", "app-1")
	disks := []takeover.Disk{{Target: "vda", Node: "disk0"}, {Target: "vdb", Node: "disk1"}}
	run := func(i int, label string) (time.Duration, time.Duration) {
		dropCaches(b)
		serial := filepath.Join(r.dir, fmt.Sprintf("cold-%s-%d.log", label, i))
		t0 := time.Now()
		plan, err := takeover.Prepare(takeover.Options{Replica: repl, WorkDir: filepath.Join(r.dir, fmt.Sprintf("dr-%s-%d", label, i)), Args: drArgs(r.kernel, r.initrd, serial), Disks: disks})
		if err != nil {
			b.Fatal(err)
		}
		vm, err := takeover.Start(context.Background(), plan, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer vm.Stop()
		return vm.Running.Sub(t0), waitTicks(b, serial, 10).Sub(vm.Running)
	}
	var warmUp, warmWork, coldUp, coldWork time.Duration
	for i := range b.N {
		u, w := run(i, "pinned")
		warmUp, warmWork = warmUp+u, warmWork+w
	}
	b.StopTimer()
	pinned := keeper.Pinned("app-1")
	keeper.Close()
	for i := range b.N {
		u, w := run(i, "cold")
		coldUp, coldWork = coldUp+u, coldWork+w
	}
	n := time.Duration(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(warmUp/n), "pinned-takeover-ms")
	b.ReportMetric(ms(warmWork/n), "pinned-to-10-ticks-ms")
	b.ReportMetric(ms(coldUp/n), "cold-takeover-ms")
	b.ReportMetric(ms(coldWork/n), "cold-to-10-ticks-ms")
	b.ReportMetric(float64(pinned)/(1<<20), "pinned-MiB")
	b.Logf("hot set %d KiB (pinned %d KiB): after dropping the page cache, takeover %v and %v to 10 ticks with the hot set pinned; %v and %v without",
		hot>>10, pinned>>10, (warmUp / n).Round(time.Millisecond), (warmWork / n).Round(time.Millisecond), (coldUp / n).Round(time.Millisecond), (coldWork / n).Round(time.Millisecond))
}
