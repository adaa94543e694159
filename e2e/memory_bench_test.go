package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
)

// memBenchEnv sets the guest RAM, in MiB, of BenchmarkSenderMemory; unset,
// the benchmark skips (a run takes many minutes, too long for the generic
// "-bench ." line of make bench, which runs it on a line of its own).
const memBenchEnv = "DRSYNC_BENCH_MEMORY_MIB"

// memBenchSettle and memBenchSteady are the epochs every VM commits after
// its first (full) one before the steady window opens, and in it. The
// first tracked cut after a full one copies every page written while the
// full epoch was sent (tens of MB for a large guest, whose full epoch
// takes longest), and the collector's goal set while those were live
// lasts until its next cycle, which in the steady state comes seconds
// later: with two settling epochs the 2 GiB guest's window caught that
// goal in some runs (steady RSS 146 to 178 MiB over five runs of nearly the same
// code), with six it is past.
const (
	memBenchSettle = 6
	memBenchSteady = 5
)

// procMem is what /proc/PID/status says of a process's memory, in bytes.
type procMem struct{ rss, anon, file, hwm int64 }

func readProcMem(pid int) (procMem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	defer f.Close()
	var m procMem
	fields := map[string]*int64{"VmRSS:": &m.rss, "RssAnon:": &m.anon, "RssFile:": &m.file, "VmHWM:": &m.hwm}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && fields[f[0]] != nil {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return procMem{}, fmt.Errorf("/proc/%d/status: %q: %w", pid, sc.Text(), err)
			}
			*fields[f[0]] = kb << 10
		}
	}
	return m, sc.Err()
}

// memRow is one run of the benchmark: vms guests on one sender.
type memRow struct {
	vms, guestMiB int
	// Medians over the steady window: after every VM's first full epoch
	// and memBenchSettle more, for memBenchSteady epochs of each.
	steady procMem
	// hwmFirst is VmHWM once every VM's first epoch committed, hwm at
	// the end of the run.
	hwmFirst, hwm  int64
	full, tracked  int // epochs committed by path
	samples        int
	first, elapsed time.Duration // until every first epoch committed; the run
	// cpuPerEpoch is the sender's CPU time (user + system) in the steady
	// window over the epochs committed in it: what the memory costs in
	// the collector's work shows here.
	cpuPerEpoch time.Duration
}

// BenchmarkSenderMemory measures the memory of one "drsync send" process
// protecting 1 and then 8 live guests at ram_capture = "tracked" (guest
// RAM from DRSYNC_BENCH_MEMORY_MIB, 75% of it random data of which the
// guest rewrites 1 MiB/s, min_interval 2s), each for its first (full)
// epoch and memBenchSettle+memBenchSteady tracked ones. A sampler reads
// the sender's /proc/PID/status every 250 ms. The table gives, per run,
// the steady-state RSS (medians; anonymous and file-backed), VmHWM once
// the first epochs are in and at the end; the per-VM cost is the slope
// (RSS(8) − RSS(1)) / 7, set against the target of 3% of guest RAM, and
// the constant is RSS(1) less one slope. Run it with -benchtime 1x.
func BenchmarkSenderMemory(b *testing.B) {
	env := os.Getenv(memBenchEnv)
	if env == "" {
		b.Skipf("set %s to the guests' RAM in MiB (make bench sets it)", memBenchEnv)
	}
	mib, err := strconv.Atoi(env)
	if err != nil || mib < 128 {
		b.Fatalf("%s=%q: want a RAM size in MiB, at least 128", memBenchEnv, env)
	}
	if os.Geteuid() != 0 {
		b.Skip("needs root (ptrace, pidfd_getfd)")
	}
	if err := dirtylog.CheckKernel(); err != nil {
		b.Skipf("this kernel cannot track guest RAM: %v", err)
	}
	var one, eight *memRow
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("%dvm", n), func(b *testing.B) {
			var row *memRow
			for b.Loop() {
				row = runSenderMemory(b, n, mib)
			}
			fmt.Print(memTable(row, one))
			b.ReportMetric(mebi(row.steady.rss), "MiB-steady")
			b.ReportMetric(mebi(row.steady.anon), "MiB-steady-anon")
			b.ReportMetric(mebi(row.hwm), "MiB-peak")
			b.ReportMetric(float64(row.cpuPerEpoch)/1e6, "ms-cpu/epoch")
			if n == 1 {
				one = row
				return
			}
			if one != nil {
				slope := perVM(row, one)
				b.ReportMetric(mebi(slope.rss), "MiB-steady/vm")
				b.ReportMetric(pctOf(slope.rss, mib), "%guest-steady/vm")
				b.ReportMetric(mebi(slope.anon), "MiB-steady-anon/vm")
				b.ReportMetric(mebi(slope.hwm), "MiB-peak/vm")
				b.ReportMetric(pctOf(slope.hwm, mib), "%guest-peak/vm")
				b.ReportMetric(mebi(one.steady.rss-slope.rss), "MiB-constant")
				eight = row
			}
		})
	}
	// One guest of four times the RAM tells what grows with RAM from what
	// each guest costs whatever its size, which one size cannot.
	b.Run("1vm-4x", func(b *testing.B) {
		var row *memRow
		for b.Loop() {
			row = runSenderMemory(b, 1, 4*mib)
		}
		fmt.Print(memTable(row, nil))
		b.ReportMetric(mebi(row.steady.rss), "MiB-steady")
		b.ReportMetric(float64(row.cpuPerEpoch)/1e6, "ms-cpu/epoch")
		if one == nil || eight == nil {
			return
		}
		m := splitMemory(one, eight, row)
		fmt.Print(m.String())
		b.ReportMetric(mebi(m.perGiB), "MiB-steady/GiB")
		b.ReportMetric(100*float64(m.perGiB)/(1<<30), "%guest-steady/GiB")
		b.ReportMetric(mebi(m.perVM), "MiB-steady/vm-fixed")
		b.ReportMetric(mebi(m.constant), "MiB-constant")
	})
}

// memModel is steady RSS = constant + guests × (perVM + perGiB × GiB of
// guest RAM), solved from three runs: 1 and n guests of one size, 1 guest
// of another.
type memModel struct {
	perGiB, perVM, constant int64
	small, large            int // MiB of the two guest sizes
}

func splitMemory(one, many, large *memRow) memModel {
	perByte := float64(large.steady.rss-one.steady.rss) / float64(int64(large.guestMiB-one.guestMiB)<<20)
	perGuest := float64(many.steady.rss-one.steady.rss) / float64(many.vms-one.vms)
	ram := float64(int64(one.guestMiB) << 20)
	perVM := perGuest - perByte*ram
	return memModel{perGiB: int64(perByte * (1 << 30)), perVM: int64(perVM), constant: one.steady.rss - int64(perGuest),
		small: one.guestMiB, large: large.guestMiB}
}

func (m memModel) String() string {
	verdict := "met"
	if float64(m.perGiB)/(1<<30) > 0.03 {
		verdict = "missed"
	}
	return fmt.Sprintf("Steady RSS = constant + per guest (fixed + per GiB of its RAM), from 1 and 8 guests of %d MiB and 1 of %d MiB: per GiB of guest RAM %.1f MiB (%.2f%%), fixed per guest %.1f MiB, constant %.1f MiB. Target ≤ 3%% of guest RAM + a constant: %s for what grows with RAM; a guest's fixed part is %.1f MiB whatever its size.\n",
		m.small, m.large, mebi(m.perGiB), 100*float64(m.perGiB)/(1<<30), mebi(m.perVM), mebi(m.constant), verdict, mebi(m.perVM))
}

func runSenderMemory(b *testing.B, n, mib int) *memRow {
	// QEMU holds each guest's RAM; the sender at worst every guest's
	// parsed stream at once.
	need := int64(n*mib*2+1024) << 20
	if avail, err := memAvailable(); err != nil {
		b.Fatal(err)
	} else if avail < need {
		b.Skipf("%d guests of %d MiB: %d MiB of memory available, the run needs about %d MiB", n, mib, avail>>20, need>>20)
	}
	fill := mib * 3 / 4
	vms := make([]*guest.VM, n)
	specs := make([]vmSpec, n)
	for i := range vms {
		dir := hosttools.ShortTempDir(b, "sm")
		raw, qcow := filepath.Join(dir, "vda.raw"), filepath.Join(dir, "vdb.qcow2")
		hosttools.Run(b, "qemu-img", "create", "-q", "-f", "raw", raw, "64M")
		hosttools.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", qcow, "32M")
		vms[i] = guest.Launch(b, guest.Options{MemMiB: mib, Disks: []guest.Disk{{Path: raw}, {Path: qcow}},
			Args:          map[string]string{"dirty_mib": strconv.Itoa(fill), "dirty_rate_kib": "1024"},
			ExtraQEMUArgs: []string{"-object", fmt.Sprintf("memory-backend-memfd,id=ram0,size=%dM,share=on", mib), "-machine", "memory-backend=ram0"}})
		specs[i] = vmSpec{name: fmt.Sprintf("guest-%d", i+1), qmp: vms[i].QMPSocket,
			extra: "min_interval = \"2s\"\nram_capture = \"tracked\"",
			disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}}
	}
	for i, vm := range vms {
		if _, err := vm.WaitFor(20*time.Minute, func(l guest.Line) bool { return strings.HasPrefix(l.Text, "FILLED ") }); err != nil {
			b.Fatalf("guest %d: %v", i+1, err)
		}
	}
	p := newPair(b, specs)
	p.startReceiver()

	start := time.Now()
	snd := testkit.Start(b, p.path("sender.log"), "send", "--config", p.sendCfg)
	var (
		mu      sync.Mutex
		samples []procMem
		at      []time.Time
	)
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if m, err := readProcMem(snd.Pid()); err == nil {
				mu.Lock()
				samples, at = append(samples, m), append(at, time.Now())
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	defer func() { close(stop); <-stopped }()
	// waitEpochs waits until every VM has committed want[i] epochs.
	waitEpochs := func(want []int, d time.Duration) []int {
		deadline := time.Now().Add(d)
		for {
			got := make([]int, n)
			done := true
			for i, s := range specs {
				got[i] = p.senderEpochs(s.name)
				done = done && got[i] >= want[i]
			}
			if done {
				return got
			}
			if time.Now().After(deadline) {
				b.Fatalf("epochs %v after %v, want %v:\n%s", got, d, want, snd.Log())
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	add := func(e []int, k int) []int {
		out := slices.Clone(e)
		for i := range out {
			out[i] += k
		}
		return out
	}
	row := &memRow{vms: n, guestMiB: mib}
	e := waitEpochs(add(make([]int, n), 1), 30*time.Minute)
	row.first = time.Since(start)
	m, err := readProcMem(snd.Pid())
	if err != nil {
		b.Fatal(err)
	}
	row.hwmFirst = m.hwm
	e = waitEpochs(add(e, memBenchSettle), 10*time.Minute)
	from := time.Now()
	_, cpu0, err := hosttools.StatCPU(fmt.Sprintf("/proc/%d/stat", snd.Pid()))
	if err != nil {
		b.Fatal(err)
	}
	end := waitEpochs(add(e, memBenchSteady), 10*time.Minute)
	_, cpu1, err := hosttools.StatCPU(fmt.Sprintf("/proc/%d/stat", snd.Pid()))
	if err != nil {
		b.Fatal(err)
	}
	epochs := 0
	for i := range end {
		epochs += end[i] - e[i]
	}
	row.cpuPerEpoch = (cpu1 - cpu0) / time.Duration(epochs)
	m, err = readProcMem(snd.Pid())
	if err != nil {
		b.Fatal(err)
	}
	row.hwm, row.elapsed = m.hwm, time.Since(start)

	mu.Lock()
	var rss, anon, file []int64
	for i, s := range samples {
		if at[i].After(from) {
			rss, anon, file = append(rss, s.rss), append(anon, s.anon), append(file, s.file)
		}
	}
	row.samples = len(rss)
	mu.Unlock()
	if row.samples == 0 {
		b.Fatal("no sample of the sender's memory in the steady window")
	}
	row.steady = procMem{rss: medianInt(rss), anon: medianInt(anon), file: medianInt(file)}

	snd.Signal(syscall.SIGTERM)
	if code, err := snd.Wait(time.Minute); code != 0 || err != nil {
		b.Fatalf("sender exit %d %v:\n%s", code, err, snd.Log())
	}
	log := snd.Log()
	row.full, row.tracked = strings.Count(log, "ram_path=full"), strings.Count(log, "ram_path=tracked")
	if row.full > n {
		b.Logf("%d full epochs for %d guests: tracking fell back to full cuts", row.full, n)
	}
	return row
}

// perVM is the slope between a run of 8 guests and one of 1: what each
// further guest adds.
func perVM(eight, one *memRow) procMem {
	d := int64(eight.vms - one.vms)
	return procMem{rss: (eight.steady.rss - one.steady.rss) / d, anon: (eight.steady.anon - one.steady.anon) / d,
		file: (eight.steady.file - one.steady.file) / d, hwm: (eight.hwm - one.hwm) / d}
}

// memTable prints row and, with the run of one guest, the per-VM slope
// against the target.
func memTable(row, one *memRow) string {
	var s strings.Builder
	fmt.Fprintf(&s, "\nSender memory, %d guest(s) of %d MiB (%d MiB random data, 1 MiB/s rewritten), ram_capture tracked, min_interval 2s; first epochs in %v, run %v, %d full + %d tracked epochs, %d samples in the steady window, sender CPU %v per epoch in it:\n",
		row.vms, row.guestMiB, row.guestMiB*3/4, row.first.Round(time.Second), row.elapsed.Round(time.Second), row.full, row.tracked, row.samples, row.cpuPerEpoch.Round(time.Millisecond))
	fmt.Fprintf(&s, "| guests | steady RSS MiB | steady anon MiB | steady file MiB | VmHWM after first epochs MiB | VmHWM end MiB | steady RSS per guest, %% of its RAM | VmHWM per guest, %% of its RAM |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(&s, "| %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f%% | %.1f%% |\n", row.vms, mebi(row.steady.rss), mebi(row.steady.anon), mebi(row.steady.file),
		mebi(row.hwmFirst), mebi(row.hwm), pctOf(row.steady.rss/int64(row.vms), row.guestMiB), pctOf(row.hwm/int64(row.vms), row.guestMiB))
	if one != nil && row.vms > one.vms && one.guestMiB == row.guestMiB {
		d := perVM(row, one)
		verdict := "met"
		if pctOf(d.rss, row.guestMiB) > 3 {
			verdict = "missed"
		}
		fmt.Fprintf(&s, "Per guest ((%d guests − 1) / %d): steady RSS %.1f MiB (%.2f%% of guest RAM; anon %.1f MiB), peak VmHWM %.1f MiB (%.1f%%); constant (RSS of 1 guest less one slope) %.1f MiB. Target ≤ 3%% of guest RAM + constant: %s.\n",
			row.vms, row.vms-one.vms, mebi(d.rss), pctOf(d.rss, row.guestMiB), mebi(d.anon), mebi(d.hwm), pctOf(d.hwm, row.guestMiB), mebi(one.steady.rss-d.rss), verdict)
	}
	return s.String()
}

func mebi(n int64) float64 { return float64(n) / (1 << 20) }

func pctOf(n int64, mib int) float64 { return 100 * float64(n) / float64(int64(mib)<<20) }

func medianInt(v []int64) int64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// memAvailable is MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (int64, error) {
	m, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(m), "\n") {
		if v, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/meminfo has no MemAvailable")
}
