package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/testkit/wanbench"
	"github.com/drsync/drsync/wanemu"
)

// wanEpoch is the time between consistent copies, for every tool.
const wanEpoch = 20 * time.Second

// BenchmarkWAN replicates the test guest (512 MiB of RAM whose page cache
// holds a 192 MiB disk of incompressible data, plus a record disk and a
// stream of random memory writes) over each emulated link, with drsync and,
// in the same run over the same link, with QEMU's own migration and with
// rsync, and prints one table (make bench-wan). Run it with -benchtime 1x:
// one iteration takes several minutes per link.
func BenchmarkWAN(b *testing.B) {
	if err := wanemu.Check(); err != nil {
		b.Skipf("no WAN emulator here: %v", err)
	}
	hosttools.Need(b, "qemu-system-x86_64", "qemu-img", "rsync")
	g := wanbench.DefaultGuest()
	var rows []wanbench.Result
	for _, link := range wanbench.Links() {
		b.Run(linkTag(link.Name), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
			defer cancel()
			em, err := wanemu.Start(ctx, wanemu.Options{AtoB: link.Settings, BtoA: link.Settings, MaxLifetime: 40 * time.Minute, Seed: 1})
			if err != nil {
				b.Fatal(err)
			}
			defer em.Stop()
			// Each tool is a sub-benchmark, so that one can be rerun alone
			// (-bench 'BenchmarkWAN/100Mbit/drsync'); the table shows what ran.
			tool := func(name string, run func(b *testing.B) (wanbench.Result, error)) {
				b.Run(name, func(b *testing.B) {
					var row wanbench.Result
					for b.Loop() {
						var err error
						if row, err = run(b); err != nil {
							b.Fatalf("%s over %s: %v", name, link.Name, err)
						}
					}
					rows = append(rows, row)
					b.ReportMetric(float64(row.InitialBytes)/1e6, "MB-initial")
					b.ReportMetric(row.InitialSync.Seconds(), "s-initial")
				})
			}
			tool("drsync", func(b *testing.B) (wanbench.Result, error) { return drsyncOverWAN(b, em, link, g, wanEpoch) })
			for _, q := range []struct {
				name string
				mode wanbench.QEMUMode
			}{{"qemu-precopy-xbzrle", wanbench.PrecopyXBZRLE}, {"qemu-multifd-zstd", wanbench.MultifdZstd}} {
				m := q.mode
				tool(q.name, func(b *testing.B) (wanbench.Result, error) { return wanbench.RunQEMU(ctx, b, em, link, g, m, wanEpoch) })
			}
			tool("rsync", func(b *testing.B) (wanbench.Result, error) { return wanbench.RunRsync(ctx, b, em, link, g, wanEpoch) })
		})
	}
	var out strings.Builder
	if err := wanbench.WriteTable(&out, rows); err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(os.Stdout, "\nWAN benchmark, guest %d MiB RAM, disks %s, epoch %v:\n\n%s\n", g.MemMiB, diskList(g), wanEpoch, out.String())
}

func diskList(g wanbench.GuestSpec) string {
	var s []string
	for _, d := range g.Disks {
		s = append(s, fmt.Sprintf("%s %d MiB", d.Name, d.SizeMiB))
	}
	return strings.Join(s, ", ")
}

func linkTag(name string) string {
	if i := strings.Index(name, ","); i > 0 {
		name = name[:i]
	}
	return strings.NewReplacer(" ", "", "/", "").Replace(name)
}

// linkBytes is what crossed the emulated link, both directions.
func linkBytes(em *wanemu.Emulator) int64 {
	s := em.Stats()
	return int64(s.AtoB.Forwarded.Bytes + s.BtoA.Forwarded.Bytes)
}

// drsyncOverWAN protects a fresh guest with drsync across em: the sender
// in namespace A, the receiver in B. The initial sync is the first epoch;
// the steady state three epochs after the second (which covers the time
// the first took).
func drsyncOverWAN(b *testing.B, em *wanemu.Emulator, link wanbench.Link, g wanbench.GuestSpec, epoch time.Duration) (wanbench.Result, error) {
	row := wanbench.Result{Tool: "drsync, default settings (auto connections): memory + disks, dedup, zstd fast", Link: link.Name, EpochInterval: epoch}
	dir := hosttools.ShortTempDir(b, "wb")
	vm := guest.Launch(b, guest.Options{MemMiB: g.MemMiB, Disks: g.Prepare(b, dir), Args: g.Args})
	if _, err := vm.WaitFor(5*time.Minute, func(l guest.Line) bool { return strings.HasPrefix(l.Text, "CACHED 1 ") }); err != nil {
		return row, fmt.Errorf("the guest did not fill its page cache: %w", err)
	}
	// Default settings but the epoch: the link is to be filled without
	// the operator tuning connections.
	p := wanPair(b, em, vm.QMPSocket, fmt.Sprintf("min_interval = %q", epoch), "")
	start, bytes0 := time.Now(), linkBytes(em)
	snd := testkit.StartWrapped(b, p.path("sender.log"), func(c *exec.Cmd) error { return em.Wrap(wanemu.SideA, c) },
		"send", "--config", p.sendCfg, "--log-json")
	defer snd.Kill()
	// Where the machine's CPU went during the initial sync.
	procs := []cpuProc{{"sender", snd.Pid()}, {"receiver", p.rcv.Pid()}, {"QEMU", vm.Pid}, {"link emulator (this process)", os.Getpid()}}
	cpu0 := readCPUSplit(b, procs)
	wait := func(n int, d time.Duration) error {
		deadline := time.Now().Add(d)
		for p.senderEpochs("guest-1") < n {
			if time.Now().After(deadline) {
				return fmt.Errorf("epoch %d not committed within %v:\n%s", n, d, snd.Log())
			}
			if code, err := snd.Wait(0); err == nil {
				return fmt.Errorf("sender exited (%d):\n%s", code, snd.Log())
			}
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	}
	if err := wait(1, 20*time.Minute); err != nil {
		return row, err
	}
	row.InitialSync, row.InitialBytes = time.Since(start), linkBytes(em)-bytes0
	b.Logf("CPU in the initial sync: %s", readCPUSplit(b, procs).since(cpu0))
	// Where the receiver's commit of the initial sync went (its phases).
	for _, l := range strings.Split(p.rcv.Log(), "\n") {
		if strings.Contains(l, `msg="epoch applied"`) && strings.Contains(l, " epoch=1 ") {
			b.Logf("receiver, initial sync: %s", l[strings.Index(l, "epoch=1 "):])
		}
	}
	if err := wait(2, 10*time.Minute); err != nil {
		return row, err
	}
	bytes2 := linkBytes(em)
	if err := wait(5, 10*time.Minute); err != nil {
		return row, err
	}
	row.SteadyBytesPerEpoch = (linkBytes(em) - bytes2) / 3
	snd.Signal(syscall.SIGTERM)
	if code, err := snd.Wait(time.Minute); code != 0 || err != nil {
		return row, fmt.Errorf("sender exit %d %v:\n%s", code, err, snd.Log())
	}
	epochs, _, _ := senderLog(b, snd.Log())
	var pauses []time.Duration
	for i, e := range epochs {
		if i >= 2 && i <= 4 {
			row.RPO = max(row.RPO, e.Time.Sub(epochs[i-1].Cut))
		}
	}
	var st struct {
		RecentPausesMS []float64 `json:"recent_pauses_ms"`
		LastResult     struct {
			WireBytes   uint64  `json:"wire_bytes"`
			SendSeconds float64 `json:"send_seconds"`
		} `json:"last_result"`
	}
	if err := json.Unmarshal(mustRead(b, p.path("state/guest-1/status.json")), &st); err != nil {
		return row, err
	}
	for _, ms := range st.RecentPausesMS {
		pauses = append(pauses, time.Duration(ms*float64(time.Millisecond)))
	}
	row.Pause = medianOf(pauses)
	if rate := float64(link.Settings.RateBitsPerSec) / 8; rate > 0 {
		row.Goodput = float64(row.InitialBytes) / row.InitialSync.Seconds() / rate
	}
	first := epochs[0]
	row.Note = fmt.Sprintf("initial sync: %d MiB of memory sent as references to disk", first.RAMRefPages*4096>>20)
	if rate := float64(link.Settings.RateBitsPerSec) / 8; rate > 0 && first.SendTime > 0 {
		row.Note += fmt.Sprintf("; %.0f%% of the link while sending", 100*float64(first.WireBytes)/first.SendTime.Seconds()/rate)
	}
	b.Logf("initial sync: %s", initialTimeline(snd.Log(), start, first))
	if levels := linkLevels(snd.Log(), start, start.Add(row.InitialSync)); levels != "" {
		row.Note += "; connections in the initial sync: " + levels
	}
	p.checkReplicaRecords("guest-1")
	b.Logf("%s: drsync initial sync %v, %.1f MB on the link; steady %.2f MB/epoch; RPO %v; pause %v",
		link.Name, row.InitialSync.Round(100*time.Millisecond), float64(row.InitialBytes)/1e6, float64(row.SteadyBytesPerEpoch)/1e6, row.RPO.Round(100*time.Millisecond), row.Pause)
	vm.Kill()
	p.rcv.Kill()
	return row, nil
}

// cpuProc is a process whose CPU time the benchmark reports.
type cpuProc struct {
	name string
	pid  int
}

// cpuSplit is the CPU time each process had used and the machine's idle
// time, at one instant; two of them bracket a phase.
type cpuSplit struct {
	at    time.Time
	procs []cpuProc
	cpu   []time.Duration
	idle  time.Duration // all CPUs, idle or waiting for IO
}

func readCPUSplit(b *testing.B, procs []cpuProc) cpuSplit {
	s := cpuSplit{at: time.Now(), procs: procs}
	for _, p := range procs {
		_, c, err := hosttools.StatCPU(fmt.Sprintf("/proc/%d/stat", p.pid))
		if err != nil {
			b.Fatalf("CPU time of the %s: %v", p.name, err)
		}
		s.cpu = append(s.cpu, c)
	}
	idle, err := hosttools.IdleCPU()
	if err != nil {
		b.Fatal(err)
	}
	s.idle = idle
	return s
}

// since reports each process's CPU seconds between from and s, the idle
// time, and the CPU time the machine had (wall time × CPUs).
func (s cpuSplit) since(from cpuSplit) string {
	wall := s.at.Sub(from.at)
	var parts []string
	for i, p := range s.procs {
		parts = append(parts, fmt.Sprintf("%s %.2fs", p.name, (s.cpu[i]-from.cpu[i]).Seconds()))
	}
	parts = append(parts, fmt.Sprintf("idle %.2fs", (s.idle-from.idle).Seconds()))
	return fmt.Sprintf("%s, of %.2fs (%.2fs × %d CPUs)", strings.Join(parts, ", "), wall.Seconds()*float64(runtime.NumCPU()), wall.Seconds(), runtime.NumCPU())
}

// initialTimeline is where the first epoch's time went, from the sender's
// JSON log: when the cut began, when its first item could go (the epoch
// opened), how long it sent and when the commit was acknowledged, each
// from the sender's start.
func initialTimeline(log string, start time.Time, first committedEpoch) string {
	var opened time.Time
	jsonLog(log, func(rec logRecord, line []byte) {
		var e struct {
			Epoch uint64 `json:"epoch"`
		}
		if rec.Msg == "epoch" && opened.IsZero() && json.Unmarshal(line, &e) == nil && e.Epoch == first.Epoch {
			opened = rec.Time
		}
	})
	at := func(t time.Time) string { return fmt.Sprintf("+%.2fs", t.Sub(start).Seconds()) }
	return fmt.Sprintf("cut at %s (guest paused %v), epoch open at %s, sent for %.2fs, committed at %s",
		at(first.Cut), first.GuestPause.Round(time.Millisecond), at(opened), first.SendTime.Seconds(), at(first.Time))
}

// linkLevels is how the connections an auto stream used changed between
// from and to, from the sender's JSON log: "1 at 0s, 2 at 1.1s (why), ...".
func linkLevels(log string, from, to time.Time) string {
	var out []string
	jsonLog(log, func(rec logRecord, line []byte) {
		n, ok := strings.CutPrefix(rec.Msg, "link: ")
		if !ok || rec.Time.After(to) {
			return
		}
		var why struct {
			Why string `json:"why"`
		}
		json.Unmarshal(line, &why)
		out = append(out, fmt.Sprintf("%s at %.1fs (%s)", strings.TrimSuffix(n, " connections"), rec.Time.Sub(from).Seconds(), why.Why))
	})
	return strings.Join(out, ", ")
}
