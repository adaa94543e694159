package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
)

// trackedRun is how long TestTrackedSubSecondEpochs protects the guest.
const trackedRun = time.Minute

// TestTrackedSubSecondEpochs protects the live test guest, its RAM in a
// shared memfd backend, with "drsync send" at ram_capture = "tracked" and
// min_interval = "200ms" for a minute: the first epoch migrates all of
// RAM, every later one the device state and the pages written since the
// cut before. The replica verifies throughout, status says "tracked", and
// a failover from the last epoch resumes the guest with its memory (its
// counter continues from the cut, its disk records are whole). It prints
// the epochs' median pause next to QEMU's own downtime for a migration of
// the same guest, measured in the same run.
func TestTrackedSubSecondEpochs(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, pidfd_getfd)")
	}
	if err := dirtylog.CheckKernel(); err != nil {
		t.Skipf("this kernel cannot track guest RAM: %v", err)
	}
	const mib = 256
	// 512 KiB/s of fresh random pages: every epoch has RAM changes.
	vm, _ := guest.ProtectedWith(t, mib, map[string]string{"dirty_mib": "32", "dirty_rate_kib": "512"},
		"-object", fmt.Sprintf("memory-backend-memfd,id=ram0,size=%dM,share=on", mib), "-machine", "memory-backend=ram0")
	p := livePair(t, vm, "min_interval = \"200ms\"\nram_capture = \"tracked\"")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := l.Addr().String()
	l.Close()
	p.write("sender.toml", fmt.Sprintf("metrics = %q\n", metricsAddr)+string(mustRead(t, p.sendCfg)))

	snd := testkit.Start(t, p.path("sender.log"), "send", "--config", p.sendCfg, "--log-level", "debug")
	if !snd.WaitLog("epoch committed", 2*time.Minute) {
		t.Fatalf("no first epoch:\n%s", snd.Log())
	}
	start, first := time.Now(), p.senderEpochs("guest-1")
	// Verify the replica over and over while epochs commit: each run
	// checks the epoch committed when it takes the replica.
	repl := filepath.Join(p.replicas, "guest-1")
	verified := map[string]bool{}
	epochRe := regexp.MustCompile(`epoch (\d+)\n`)
	var verifying time.Duration
	for time.Since(start) < trackedRun {
		v0 := time.Now()
		code, out := testkit.Run(t, "verify", "--replica", repl, "--wait", "60s")
		verifying += time.Since(v0)
		if code != 0 {
			t.Fatalf("verify during the run: exit %d\n%s", code, out)
		}
		if m := epochRe.FindStringSubmatch(out); m != nil {
			verified[m[1]] = true
		}
		time.Sleep(3 * time.Second)
	}
	elapsed := time.Since(start)
	epochs := p.senderEpochs("guest-1") - first
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `drsync_sender_ram_capture{path="tracked",vm="guest-1"} 1`; !strings.Contains(string(body), want) {
		t.Errorf("metrics lack %s", want)
	}
	snd.Signal(syscall.SIGTERM)
	if code, err := snd.Wait(30 * time.Second); code != 0 || err != nil {
		t.Fatalf("sender exit %d %v:\n%s", code, err, snd.Log())
	}
	p.verify("guest-1")
	recs := p.checkReplicaRecords("guest-1")
	m := p.manifest("guest-1")

	// Every epoch after the first took the tracked path.
	log := snd.Log()
	full, tracked := strings.Count(log, "ram_path=full"), strings.Count(log, "ram_path=tracked")
	if full != 1 || tracked < 2 {
		t.Errorf("%d full and %d tracked epochs; want the first full and every later one tracked; the full cuts and the warnings:\n%s\n%s",
			full, tracked, grepLines(log, "ram_path=full", 5), grepLines(log, "level=WARN", 10))
	}
	var st struct {
		LastResult struct {
			RAMPath string `json:"ram_path"`
		} `json:"last_result"`
	}
	if err := json.Unmarshal(mustRead(t, filepath.Join(p.dir, "state", "guest-1", "status.json")), &st); err != nil {
		t.Fatal(err)
	}
	table := testkit.MustRun(t, "status", "--config", p.sendCfg)
	if st.LastResult.RAMPath != "tracked" || !strings.Contains(table, "(RAM tracked)") {
		t.Errorf("status does not say tracked: ram_path %q\n%s", st.LastResult.RAMPath, table)
	}
	if !strings.Contains(testkit.MustRun(t, "status", "--json", "--config", p.sendCfg), `"ram_path": "tracked"`) {
		t.Error("status --json has no ram_path tracked")
	}
	pauses, durations, sends, cuts := trackedEpochFigures(t, log)
	freezes, scans := cuts["freeze"], cuts["scan"]
	var steps []string
	for _, k := range []string{"fleece", "transaction", "cont"} {
		steps = append(steps, fmt.Sprintf("%s %v", k, median(cuts[k]).Round(10*time.Microsecond)))
	}
	medPause := median(pauses)
	qemuDown, qemuReported := qemuDowntime(t, vm.QMPSocket)
	t.Logf("%d epochs in %v after the first (mean interval %v, min_interval 200ms); %d verified during the run (verify ran %v of it) and the last (%d) after it",
		epochs, elapsed.Round(time.Millisecond), (elapsed / time.Duration(max(epochs, 1))).Round(time.Millisecond), len(verified), verifying.Round(time.Second), m.Epoch)
	t.Logf("tracked epochs: cut to commit median %v (send %v); guest pause median %v, max %v, %d of %d cuts by background snapshot, disks' backup jobs started %d before the stop, %d overtaken by a write and started again while stopped, %d while stopped "+
		"(freeze: the cut's work with the guest stopped, scan and copy of written pages, and the transaction of jobs started while stopped; fleece: before the stop, but for overtaken jobs; cont: migrate to QEMU's RESUME); freeze median %v (scan and copy %v; QMP steps' medians: %s); "+
		"QEMU's own downtime migrating the same guest (all of RAM) to /dev/null, STOP to completion: median %v (QEMU's figure %v); pause/downtime %.2f",
		median(durations), median(sends), medPause.Round(100*time.Microsecond), slices.Max(pauses).Round(100*time.Microsecond), strings.Count(log, "background=true"), len(freezes),
		strings.Count(log, "disks=early"), strings.Count(log, "disks=late"), strings.Count(log, "disks=stopped"),
		median(freezes).Round(100*time.Microsecond), median(scans).Round(10*time.Microsecond), strings.Join(steps, ", "), qemuDown.Round(10*time.Microsecond), qemuReported, float64(medPause)/float64(max(qemuDown, 100*time.Microsecond)))
	t.Logf("drsync status:\n%s", table)
	if epochs < 10 {
		t.Errorf("only %d epochs in %v; the warnings:\n%s", epochs, elapsed, grepLines(log, "level=WARN", 10))
	}

	failoverChecks(t, p, vm, m, recs, `accel = "tcg"`+"\nmain_ram = \"ram0\"")
}

// trackedEpochFigures reads, from the sender's debug log, the figures of
// its tracked epochs: from the commit lines the guest pause, the epoch's
// duration (cut to commit) and its send time; from the cut lines, by key,
// the freeze (the part of the pause after QEMU's migration completed), the
// scan and copy of the written pages, and the freeze's QMP steps (fleece,
// transaction, cont).
func trackedEpochFigures(t *testing.T, log string) (pauses, durations, sends []time.Duration, cuts map[string][]time.Duration) {
	t.Helper()
	attr := func(line, key string) time.Duration {
		m := regexp.MustCompile(`\b` + key + `=(\S+)`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("no %s in %q", key, line)
		}
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("%s in %q: %v", key, line, err)
		}
		return d
	}
	cuts = map[string][]time.Duration{}
	for _, line := range strings.Split(log, "\n") {
		switch {
		case strings.Contains(line, "epoch committed") && strings.Contains(line, "ram_path=tracked"):
			pauses = append(pauses, attr(line, "guest_pause"))
			durations = append(durations, attr(line, "duration"))
			sends = append(sends, attr(line, "send_time"))
		case strings.Contains(line, "msg=cut ") && strings.Contains(line, "ram=tracked"):
			for _, k := range []string{"freeze", "scan", "fleece", "transaction", "cont"} {
				cuts[k] = append(cuts[k], attr(line, k))
			}
		}
	}
	if len(pauses) == 0 || len(cuts["freeze"]) == 0 {
		t.Fatalf("no tracked epoch in the sender's log:\n%s", log)
	}
	return pauses, durations, sends, cuts
}

// qemuDowntime is the median downtime of three migrations of the guest
// into /dev/null (all of RAM, the guest running, at 10 GiB/s), timed as
// the guest's pauses are: from QEMU's STOP to its MIGRATION completed,
// both stamped by QEMU in microseconds (QEMU's own downtime figure spans
// the same steps, from just before it stops the guest to the completion,
// but in whole milliseconds, which at a few ms swings the ratio by half);
// reported is the median of QEMU's figures, for comparison.
func qemuDowntime(t *testing.T, sock string) (timed, reported time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := qmp.Dial(ctx, sock, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The sender must not leave a background snapshot armed: the
	// operator's next migration would be one, its source running on.
	var caps []struct {
		Capability string
		State      bool
	}
	if err := s.Execute(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
		t.Fatal(err)
	}
	for _, c := range caps {
		if c.Capability == "background-snapshot" && c.State {
			t.Error("the sender left QEMU's background-snapshot capability on")
		}
	}
	// A tracked cut may have left shared RAM out of migrations.
	if err := s.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": false}}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(10 << 30)}, nil); err != nil {
		t.Fatal(err)
	}
	// The sender exited cleanly before this: it must have left no block
	// job, export or node of its own, which would also keep QEMU from
	// inactivating its disks at the end of a migration.
	if left := blockState(ctx, s); strings.Contains(left, "drsync-") || strings.Contains(left, "job ") || strings.Contains(left, "export ") {
		t.Errorf("the sender left block state in QEMU after a clean exit:\n%s", left)
	}
	var downs, timedDowns []time.Duration
	for i := range 3 {
		sub := s.Subscribe("STOP", "MIGRATION")
		if err := s.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > /dev/null"}, nil); err != nil {
			t.Fatal(err)
		}
		var mig struct {
			Status   string
			Downtime int64
			RAM      struct{ Transferred int64 }
		}
		for mig.Status != "completed" {
			time.Sleep(5 * time.Millisecond)
			if err := s.Execute(ctx, "query-migrate", nil, &mig); err != nil {
				t.Fatal(err)
			}
			if mig.Status == "failed" {
				var full struct {
					ErrorDesc string `json:"error-desc"`
				}
				s.Execute(ctx, "query-migrate", nil, &full)
				t.Fatalf("QEMU's migration %d of 3 to /dev/null failed: %s; QEMU's block state:\n%s", i+1, full.ErrorDesc, blockState(ctx, s))
			}
		}
		// "completed" may come before QEMU leaves finish-migrate, when
		// cont is refused ("Migration is not finalized yet").
		for i := 0; ; i++ {
			err := s.Execute(ctx, "cont", nil, nil)
			if err == nil {
				break
			}
			if i == 100 {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if mig.RAM.Transferred < 64<<20 {
			t.Fatalf("QEMU's migration carried %d bytes of RAM: shared RAM was left out", mig.RAM.Transferred)
		}
		downs = append(downs, time.Duration(mig.Downtime)*time.Millisecond)
		var stopAt time.Time
		for {
			e, err := sub.Next(ctx)
			if err != nil {
				t.Fatalf("QEMU's migration %d of 3: events: %v", i+1, err)
			}
			if e.Name == "STOP" {
				stopAt = e.At
			} else if e.Str("status") == "completed" {
				if stopAt.IsZero() {
					t.Fatalf("QEMU's migration %d of 3 completed without a STOP", i+1)
				}
				timedDowns = append(timedDowns, e.At.Sub(stopAt))
				break
			}
		}
		sub.Close()
		time.Sleep(300 * time.Millisecond)
	}
	slices.Sort(downs)
	slices.Sort(timedDowns)
	return timedDowns[1], downs[1]
}

// blockState lists, one a line, QEMU's block jobs, block exports and
// named block nodes, and its run state: what can keep a migration from
// inactivating the disks.
func blockState(ctx context.Context, s *qmp.Session) string {
	var b strings.Builder
	var jobs []struct{ Device, Type, Status string }
	if err := s.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
		fmt.Fprintf(&b, "query-block-jobs: %v\n", err)
	}
	for _, j := range jobs {
		fmt.Fprintf(&b, "job %s (%s) %s\n", j.Device, j.Type, j.Status)
	}
	var exports []struct {
		ID       string `json:"id"`
		NodeName string `json:"node-name"`
	}
	if err := s.Execute(ctx, "query-block-exports", nil, &exports); err != nil {
		fmt.Fprintf(&b, "query-block-exports: %v\n", err)
	}
	for _, e := range exports {
		fmt.Fprintf(&b, "export %s of %s\n", e.ID, e.NodeName)
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
	}
	if err := s.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		fmt.Fprintf(&b, "query-named-block-nodes: %v\n", err)
	}
	for _, n := range nodes {
		fmt.Fprintf(&b, "node %s (%s)\n", n.NodeName, n.Drv)
	}
	var st struct{ Status string }
	if err := s.Execute(ctx, "query-status", nil, &st); err != nil {
		fmt.Fprintf(&b, "query-status: %v\n", err)
	}
	fmt.Fprintf(&b, "status %s", st.Status)
	return b.String()
}

// failoverChecks loses the protected site (the guest's QEMU is killed) and
// runs the failover runbook, its [[vm]] given vmKeys (replacing its accel
// line), as TestFailoverRunbook does: the DR guest continues from epoch
// m's cut with its memory (counter, no boot) and its disk records (recs,
// the replica's) go on.
func failoverChecks(t *testing.T, p *pair, vm *guest.VM, m *replica.Manifest, recs guest.Records, vmKeys string) {
	t.Helper()
	var before, after guest.Tick
	for _, tk := range vm.Ticks() {
		if tk.At.Before(m.Cut) {
			before = tk
		} else if after.At.IsZero() {
			after = tk
		}
	}
	vm.Kill()
	serial := p.path("dr-serial.log")
	rb := p.runbookFile("runbook.toml", p.recvCfg, serial, "")
	p.write("runbook.toml", strings.Replace(string(mustRead(t, rb)), `accel = "tcg"`, vmKeys, 1))
	t.Cleanup(func() { killDRVMs(p) })
	t0 := time.Now()
	out := testkit.MustRun(t, "failover", "--runbook", rb)
	t.Logf("failover (%v):\n%s", time.Since(t0).Round(time.Millisecond), out)
	var ticks []guest.Tick
	for deadline := time.Now().Add(30 * time.Second); len(ticks) < 10 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ticks = guest.ParseTicks(mustRead(t, serial))
	}
	log := string(mustRead(t, serial))
	if len(ticks) < 10 || strings.Contains(log, "START") || strings.Contains(log, "RESUME") {
		t.Fatalf("the DR guest did not continue (%d ticks):\n%s", len(ticks), log)
	}
	t.Logf("protected guest: counter %d before epoch %d's cut, %d after it; DR guest continues at counter %d, record %d (replica held records %d..%d)",
		before.Counter, m.Epoch, after.Counter, ticks[0].Counter, ticks[0].Seq, recs.First, recs.Last)
	if ticks[0].Counter < before.Counter || ticks[0].Counter > after.Counter+20 {
		t.Errorf("DR counter %d does not continue from the cut (%d..%d)", ticks[0].Counter, before.Counter, after.Counter)
	}
	if ticks[0].Seq+5 < recs.Last || ticks[0].Seq > recs.Last+5 {
		t.Errorf("DR guest's last record %d, the replica's %d", ticks[0].Seq, recs.Last)
	}
	if last := ticks[len(ticks)-1]; last.Seq <= ticks[0].Seq {
		t.Errorf("the DR guest writes no records: %v", ticks)
	}
}

// BenchmarkTrackedWriteSlowdown measures what continuous dirty logging
// costs the guest: a guest storing into every page of a 64 MiB buffer as
// fast as it can (workload write_mib; the worst case, a fresh
// write-protection fault per page per round) reports its write rate
// untracked, then tracked with a scan every 200 ms as 200 ms epochs would
// make (each re-protecting the pages written), then untracked again, in
// one run. No sender runs, so the figure is the logging's own cost, not
// the epochs' competition for the host's CPU.
func BenchmarkTrackedWriteSlowdown(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (ptrace, pidfd_getfd)")
	}
	if err := dirtylog.CheckKernel(); err != nil {
		b.Skipf("this kernel cannot track guest RAM: %v", err)
	}
	const mib = 256
	vm, _ := guest.ProtectedWith(b, mib, map[string]string{"write_mib": "64", "dirty_mib": "0", "rate": "0"},
		"-object", fmt.Sprintf("memory-backend-memfd,id=ram0,size=%dM,share=on", mib), "-machine", "memory-backend=ram0")
	const phase = 8 * time.Second
	// rate is the guest's pages per second over the WROTE lines of the
	// next phase (the first second skipped: a line may span the switch).
	rate := func() float64 {
		from := time.Now().Add(time.Second)
		time.Sleep(phase)
		var pages, ms int64
		for _, l := range vm.Lines() {
			var n, d int64
			if l.At.After(from) && strings.HasPrefix(l.Text, "WROTE ") {
				if _, err := fmt.Sscanf(l.Text, "WROTE %d %d", &n, &d); err == nil {
					pages, ms = pages+n, ms+d
				}
			}
		}
		if ms == 0 {
			b.Fatalf("no WROTE lines from the guest:\n%v", vm.Lines()[max(0, len(vm.Lines())-5):])
		}
		return float64(pages) / (float64(ms) / 1000)
	}
	for range b.N {
		before := rate()
		g, err := dirtylog.TrackGuest(vm.Pid, mib<<20)
		if err != nil {
			b.Fatal(err)
		}
		stop := make(chan struct{})
		scanned := make(chan int)
		go func() {
			n := -1 // the first scan lists every page: it arms the protection
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					scanned <- n
					return
				case <-t.C:
					r, err := g.Scan()
					if err != nil {
						b.Error(err)
					}
					if n < 0 {
						n = 0
					} else {
						n += dirtylog.Pages(r)
					}
				}
			}
		}()
		during := rate()
		close(stop)
		pages := <-scanned
		g.Close()
		after := rate()
		untracked := (before + after) / 2
		slow := 1 - during/untracked
		// What a store to a protected page costs more: the fault.
		perFault := time.Duration((1/during - 1/untracked) * float64(time.Second))
		b.Logf("guest stores into %.0f pages/s untracked, %.0f tracked (scan every 200 ms, %d pages written after the first), %.0f untracked again: %.1f%% slower tracked, %v more per store to a protected page",
			before, during, pages, after, 100*slow, perFault.Round(100*time.Nanosecond))
		b.ReportMetric(100*slow, "%slower")
		b.ReportMetric(during, "pages/s-tracked")
		b.ReportMetric(untracked, "pages/s-untracked")
	}
}
