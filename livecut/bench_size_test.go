package livecut_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/wire"
)

// Epochs measured after the first (full) one and the warm-up epochs
// after it. A full-path epoch of a 4 GiB guest under TCG migrates, parses
// and hashes all of RAM, so it gets fewer. The warm-up epochs run and are
// logged but left out of the medians: the first tracked cut after the
// full one carries every page written while that epoch was sent, and the
// next ones the collection of its heap (a series ran about 460, 120, 110,
// 80, 70, 60, 60, 55 ms of sender CPU), which is not the steady state.
const (
	sizeBenchTrackedEpochs = 8
	sizeBenchFullEpochs    = 3
	sizeBenchWarmEpochs    = 3
	sizeBenchDirtyKiB      = 1024 // the guest's memory writes per second
)

// sizeBenchGiB are the guest sizes of BenchmarkCaptureBySize:
// DRSYNC_BENCH_RAM_GIB (e.g. "1" or "1,2") trims the table for quick runs.
func sizeBenchGiB(b *testing.B) []int {
	s := os.Getenv("DRSYNC_BENCH_RAM_GIB")
	if s == "" {
		return []int{1, 2, 4}
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 64 {
			b.Fatalf("DRSYNC_BENCH_RAM_GIB=%q: want GiB sizes such as 1,2,4", s)
		}
		out = append(out, n)
	}
	return out
}

// qemuCPU is a QEMU process's CPU time: all threads (live and exited, as
// /proc/PID/stat's utime+stime count them) and its vCPU threads (under
// TCG the guest's own execution). Both have the clock tick's resolution.
type qemuCPU struct{ total, vcpu time.Duration }

func (a qemuCPU) sub(b qemuCPU) qemuCPU { return qemuCPU{a.total - b.total, a.vcpu - b.vcpu} }

func readQEMUCPU(pid int) (qemuCPU, error) {
	_, total, err := hosttools.StatCPU(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return qemuCPU{}, err
	}
	c := qemuCPU{total: total}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return qemuCPU{}, err
	}
	for _, t := range tasks {
		comm, cpu, err := hosttools.StatCPU(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
		if err != nil {
			continue // a thread that just exited
		}
		if strings.HasPrefix(comm, "CPU ") { // "CPU 0/TCG", "CPU 0/KVM"
			c.vcpu += cpu
		}
	}
	return c, nil
}

// meteredSource measures QEMU's CPU time over each cut: from before
// migrate until the guest runs again and the views are exported.
type meteredSource struct {
	src  *livecut.Source
	pid  int
	last qemuCPU
	err  error
}

func (m *meteredSource) Snapshot(ctx context.Context) (*sender.Snapshot, error) {
	c0, err0 := readQEMUCPU(m.pid)
	snap, err := m.src.Snapshot(ctx)
	c1, err1 := readQEMUCPU(m.pid)
	m.last, m.err = c1.sub(c0), cmpErr(err0, err1)
	return snap, err
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func memAvailable() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/meminfo: no MemAvailable")
}

// pathRow is one RAM path's steady state for one guest: medians over the
// epochs after the first.
type pathRow struct {
	epochs                   int
	capture, cpu, pause      time.Duration
	rcvCPU                   time.Duration // the receiver process's
	qemuCut, qemuCutVCPU     time.Duration
	qemuEpoch                time.Duration
	planned, wire, dirty     int64
	firstRAMPages, ramPages  int64 // non-zero RAM pages the first epoch planned, RAM pages
	firstEpoch, firstCapture time.Duration
}

type sizeCase struct {
	gib, fill     int
	full, tracked *pathRow
}

// BenchmarkCaptureBySize is the O(dirty) table: guests of 1, 2 and 4 GiB
// (DRSYNC_BENCH_RAM_GIB trims it) whose RAM is a shared memfd backend, about
// 10% and 75% of it random data (the workload's dirty_mib buffer) of which
// the guest rewrites 1 MiB a second. Each guest (one at a time) is
// replicated into a replica on disk first with every cut migrating all
// of RAM (full), then with RAM tracking (tracked): a first full epoch,
// sizeBenchWarmEpochs warm-up epochs, then sizeBenchFullEpochs or
// sizeBenchTrackedEpochs epochs, all a second apart; the medians of the
// last are the steady state. Per epoch: capture time, the sender
// process's CPU (capture, plan, encode), the receiver's (a process of its
// own, as at a DR site: staging and applying into the replica), QEMU's
// CPU over the cut (migrate until the guest runs and the
// views are exported; all threads, and without the vCPU thread, which
// under TCG is the guest running) and over the epoch, the guest's pause,
// the data bytes the plan sends (changed pages after dedup, uncompressed)
// and the bytes written to the connection. The series runs once per
// benchmark iteration (run it with -benchtime 1x; ns/op is the series).
// The table, with the target's ratios, is printed at the end. Under TCG
// with QEMU before 9.0 a full cut is a stopped pass (NeedsStoppedPass):
// the guest is paused for the whole migration.
func BenchmarkCaptureBySize(b *testing.B) {
	hosttools.Need(b, "qemu-system-x86_64", "qemu-img")
	guest.Build(b)
	var cases []*sizeCase
	for _, gib := range sizeBenchGiB(b) {
		for _, fill := range []int{10, 75} {
			c := &sizeCase{gib: gib, fill: fill}
			b.Run(fmt.Sprintf("%dGiB-%dpct", gib, fill), func(b *testing.B) {
				runSizeCase(b, c)
			})
			if c.full != nil && c.tracked != nil {
				cases = append(cases, c)
			}
		}
	}
	// Printed rather than logged: a parent benchmark's log shows only
	// with -v.
	if len(cases) > 0 {
		fmt.Print(sizeTable(cases))
	}
}

func runSizeCase(b *testing.B, c *sizeCase) {
	mib := c.gib << 10
	// QEMU holds the filled part, the sender its parsed RAM and the
	// tracked image.
	need := int64(mib*c.fill/100+2*mib+1024) << 20
	if avail, err := memAvailable(); err != nil {
		b.Fatal(err)
	} else if avail < need {
		b.Skipf("%d GiB guest: %d MiB of memory available, the case needs about %d MiB", c.gib, avail>>20, need>>20)
	}
	dir := hosttools.ShortTempDir(b, "sb")
	raw := filepath.Join(dir, "vda.raw")
	hosttools.Run(b, "qemu-img", "create", "-q", "-f", "raw", raw, "64M")
	fillMiB := mib * c.fill / 100
	vm := guest.Launch(b, guest.Options{MemMiB: mib, Disks: []guest.Disk{{Path: raw}},
		Args: map[string]string{"dirty_mib": strconv.Itoa(fillMiB), "dirty_rate_kib": strconv.Itoa(sizeBenchDirtyKiB)},
		// Named threads tell the vCPU ("CPU 0/TCG") from the rest.
		ExtraQEMUArgs: append(sharedRAMArgs(mib), "-name", "bench,debug-threads=on")})
	filled, err := vm.WaitFor(10*time.Minute, func(l guest.Line) bool { return strings.HasPrefix(l.Text, "FILLED ") })
	if err != nil {
		b.Fatal(err)
	}
	fmt.Printf("%s: %s (bytes, ms), %v after QEMU started\n", b.Name(), filled.Text, filled.At.Sub(vm.Started).Round(time.Second))
	for _, path := range []string{livecut.RAMFull, livecut.RAMTracked} {
		b.Run(path, func(b *testing.B) {
			row := runSizePath(b, vm, dir, mib, path)
			if path == livecut.RAMFull {
				c.full = row
			} else {
				c.tracked = row
			}
		})
		// The replica and the parsed RAM of this path go before the next
		// one allocates its own.
		runtime.GC()
		debug.FreeOSMemory()
	}
}

func runSizePath(b *testing.B, vm *guest.VM, dir string, mib int, path string) *pathRow {
	o := livecut.Options{QMPSocket: vm.QMPSocket, WorkDir: filepath.Join(dir, "work-"+path), Now: time.Now,
		Disks: []livecut.Disk{{Name: "vda", Node: "disk0"}},
		// A first cut of a 4 GiB guest on a loaded host can outlast the
		// default minute.
		CutTimeout: 5 * time.Minute}
	epochs := sizeBenchFullEpochs
	if path == livecut.RAMTracked {
		epochs = sizeBenchTrackedEpochs
		o.SharedRAM = "ram0"
		o.TrackRAM = func() (livecut.RAMTracker, error) { return dirtylog.TrackGuest(vm.Pid, uint64(mib)<<20) }
	}
	src, err := livecut.New(o)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	ms := &meteredSource{src: src, pid: vm.Pid}
	// The replica is on disk: an in-memory one of a 4 GiB guest, next to
	// the sender's parsed RAM and tracked image, outgrows the host.
	root := filepath.Join(dir, "replica-"+path)
	if err := os.MkdirAll(root, 0o755); err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(root)
	rcv := startReceiver(b, root)
	snd, err := sender.New(sender.Options{VM: "bench", Source: ms, Dialer: rcv.dialer(),
		Store: sender.Store{FS: memfs.New(), Dir: "/s"}, Compression: wire.CompressFast, Now: time.Now})
	if err != nil {
		b.Fatal(err)
	}
	defer snd.Close()

	row := &pathRow{epochs: epochs, ramPages: int64(mib) << 20 / 4096}
	t0 := time.Now()
	first, err := snd.RunEpoch(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	row.firstEpoch, row.firstCapture = time.Since(t0), src.LastCut().Capture
	row.firstRAMPages = first.RAMDataPages + first.RAMRefPages
	var cpus, rcpus, captures, pauses, qCut, qCutV, qEpoch, warm []time.Duration
	var planned, wireB, dirty []int64
	// DRSYNC_BENCH_PROFILE=<file> profiles the measured epochs of the
	// tracked path: the first epoch and the warm-up ones would dominate
	// a -cpuprofile.
	profile := func() {
		f := os.Getenv("DRSYNC_BENCH_PROFILE")
		if f == "" || path != livecut.RAMTracked {
			return
		}
		out, err := os.Create(f)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { out.Close() })
		if err := pprof.StartCPUProfile(out); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(pprof.StopCPUProfile)
	}
	b.ResetTimer()
	for range b.N {
		for e := range sizeBenchWarmEpochs + epochs {
			if e == sizeBenchWarmEpochs {
				profile()
			}
			time.Sleep(time.Second) // the guest writes ~1 MiB
			q0, err := readQEMUCPU(vm.Pid)
			if err != nil {
				b.Fatal(err)
			}
			r0, err := rcv.cpu()
			if err != nil {
				b.Fatal(err)
			}
			c0 := hosttools.SelfCPU()
			res, err := snd.RunEpoch(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			if e < sizeBenchWarmEpochs {
				warm = append(warm, hosttools.SelfCPU()-c0)
				continue
			}
			cpus = append(cpus, hosttools.SelfCPU()-c0)
			// The epoch returns once the receiver applied it.
			r1, err := rcv.cpu()
			if err != nil {
				b.Fatal(err)
			}
			rcpus = append(rcpus, r1-r0)
			q1, err := readQEMUCPU(vm.Pid)
			if err != nil || ms.err != nil {
				b.Fatal(cmpErr(err, ms.err))
			}
			st := src.LastCut()
			if st.RAMPath != path {
				b.Fatalf("an epoch took the %s path, want %s", st.RAMPath, path)
			}
			captures = append(captures, st.Capture)
			pauses = append(pauses, res.Pause)
			qCut = append(qCut, ms.last.total)
			qCutV = append(qCutV, ms.last.total-ms.last.vcpu)
			qEpoch = append(qEpoch, q1.sub(q0).total)
			planned = append(planned, int64(res.DataBytes))
			wireB = append(wireB, int64(res.WireBytes))
			dirty = append(dirty, int64(st.DirtyPages))
		}
	}
	b.StopTimer()
	row.cpu, row.rcvCPU, row.capture, row.pause = medianOf(cpus), medianOf(rcpus), medianOf(captures), medianOf(pauses)
	row.qemuCut, row.qemuCutVCPU, row.qemuEpoch = medianOf(qCut), medianOf(qCutV), medianOf(qEpoch)
	row.planned, row.wire, row.dirty = medianInt(planned), medianInt(wireB), medianInt(dirty)
	msf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(msf(row.capture), "capture-ms")
	b.ReportMetric(msf(row.cpu), "cpu-ms/epoch")
	b.ReportMetric(msf(row.rcvCPU), "receiver-cpu-ms/epoch")
	b.ReportMetric(msf(row.qemuCut), "qemu-cut-cpu-ms")
	b.ReportMetric(msf(row.qemuEpoch), "qemu-epoch-cpu-ms")
	b.ReportMetric(msf(row.pause), "pause-ms")
	b.ReportMetric(float64(row.planned), "planned-B/epoch")
	b.ReportMetric(float64(row.wire), "wire-B/epoch")
	b.Logf("%s, %d MiB guest, %d epochs after a first of %v (capture %v, %.0f%% of RAM pages non-zero) and %d warm-up epochs (sender CPU %v): sender CPU %v (max %v), capture %v (max %v), QEMU CPU over the cut %v (%v without the vCPU), over the epoch %v, pause %v (max %v), %d dirty pages, planned %d B, wire %d B per epoch, receiver CPU %v (medians); sender CPU by epoch %v",
		path, mib, len(cpus), row.firstEpoch.Round(time.Millisecond), row.firstCapture.Round(time.Millisecond), 100*float64(row.firstRAMPages)/float64(row.ramPages),
		len(warm), roundAll(warm, time.Millisecond),
		row.cpu.Round(time.Millisecond), slices.Max(cpus).Round(time.Millisecond), row.capture.Round(time.Millisecond), slices.Max(captures).Round(time.Millisecond),
		row.qemuCut, row.qemuCutVCPU, row.qemuEpoch, row.pause.Round(100*time.Microsecond), slices.Max(pauses).Round(100*time.Microsecond),
		row.dirty, row.planned, row.wire, row.rcvCPU.Round(time.Millisecond), roundAll(cpus, time.Millisecond))
	return row
}

func roundAll(v []time.Duration, to time.Duration) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, d := range v {
		out[i] = d.Round(to)
	}
	return out
}

func medianInt(v []int64) int64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// sizeTable lays the cases out side by side, tracked against full, and
// states the target's ratios: at the largest guest with 75% non-zero,
// tracked sender CPU per epoch at most 5% of the full path's, and tracked
// capture at most 2× that of the 1 GiB guest with the same fill.
func sizeTable(cases []*sizeCase) string {
	var sb strings.Builder
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) }
	kb := func(n int64) string { return strconv.FormatFloat(float64(n)/1024, 'f', 0, 64) }
	fmt.Fprintf(&sb, "O(dirty) capture, steady state (medians; tracked %d epochs, full %d, each after %d warm-up epochs; %d KiB/s of guest writes; QEMU CPU over the cut, in 10 ms ticks)\n",
		sizeBenchTrackedEpochs, sizeBenchFullEpochs, sizeBenchWarmEpochs, sizeBenchDirtyKiB)
	fmt.Fprintf(&sb, "| guest | non-zero | capture ms tracked / full | sender CPU ms tracked / full (ratio) | receiver CPU ms tracked / full | QEMU CPU ms tracked / full (no vCPU) | pause ms tracked / full | planned KiB tracked / full | wire KiB tracked / full |\n")
	fmt.Fprintf(&sb, "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range cases {
		t, f := c.tracked, c.full
		fmt.Fprintf(&sb, "| %d GiB, %d%% | %.0f%% | %s / %s | %s / %s (%.1f%%) | %s / %s | %s / %s (%s / %s) | %s / %s | %s / %s | %s / %s |\n",
			c.gib, c.fill, 100*float64(f.firstRAMPages)/float64(f.ramPages),
			ms(t.capture), ms(f.capture), ms(t.cpu), ms(f.cpu), 100*float64(t.cpu)/float64(f.cpu), ms(t.rcvCPU), ms(f.rcvCPU),
			ms(t.qemuCut), ms(f.qemuCut), ms(t.qemuCutVCPU), ms(f.qemuCutVCPU),
			ms(t.pause), ms(f.pause), kb(t.planned), kb(f.planned), kb(t.wire), kb(f.wire))
	}
	big := slices.MaxFunc(cases, func(a, b *sizeCase) int { return a.gib - b.gib }).gib
	for _, fill := range []int{75, 10} {
		var small, large *sizeCase
		for _, c := range cases {
			if c.fill != fill {
				continue
			}
			if c.gib == 1 {
				small = c
			}
			if c.gib == big {
				large = c
			}
		}
		if large == nil {
			continue
		}
		cpuRatio := float64(large.tracked.cpu) / float64(large.full.cpu)
		fmt.Fprintf(&sb, "%d GiB, %d%% non-zero: tracked sender CPU per epoch = %.1f%% of the full path's (target ≤ 5%%: %s)",
			large.gib, fill, 100*cpuRatio, verdict(cpuRatio <= 0.05))
		if small != nil && small != large {
			capRatio := float64(large.tracked.capture) / float64(small.tracked.capture)
			fmt.Fprintf(&sb, "; tracked capture %d GiB / 1 GiB = %.2f× (target ≤ 2×: %s)", large.gib, capRatio, verdict(capRatio <= 2))
		}
		sb.WriteString("\n")
	}
	return sb.String()
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "missed"
}
