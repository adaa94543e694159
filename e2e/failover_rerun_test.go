package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/guest/record"
)

// TestFailoverRerunKeepsDRWrites: after a failover the DR guest's disk
// overlays are production data. The DR guest writes records, its QEMU is
// stopped and quit, and the runbook runs again: the VM boots from its
// overlays (every record the DR guest wrote is still there, byte for byte,
// and the guest's workload resumes after the last of them), not from the
// replica's older epoch. --discard-dr-writes is refused while the VM runs;
// once it is gone, it moves the overlays aside (still readable, every
// record there) and resumes the replica's epoch with its memory.
func TestFailoverRerunKeepsDRWrites(t *testing.T) {
	vm, _ := liveGuest(t, 256, nil)
	p := livePair(t, vm, "")
	for range 2 {
		testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
		time.Sleep(500 * time.Millisecond)
	}
	recs := p.checkReplicaRecords("guest-1")
	var cutCounter uint64
	m := p.manifest("guest-1")
	for _, tk := range vm.Ticks() {
		if tk.At.Before(m.Cut) {
			cutCounter = tk.Counter
		}
	}
	vm.Kill()

	serial := p.path("dr-serial.log")
	rbPath := p.runbookFile("runbook.toml", p.recvCfg, serial, "")
	t.Cleanup(func() { killDRVMs(p) })
	testkit.MustRun(t, "failover", "--runbook", rbPath)

	// The DR guest writes records the replica never had.
	const extra = 40
	waitSeq(t, serial, recs.Last+extra)
	quitDRVM(t, p)
	overlay := p.path("failover/guest-1/disk-disk0.qcow2")
	written := overlayRecords(t, p, overlay, "written")
	drLast := maxSeq(written)
	t.Logf("replica holds records %d..%d (epoch %d); the DR guest wrote up to %d before it was quit", recs.First, recs.Last, m.Epoch, drLast)
	if drLast < recs.Last+extra {
		t.Fatalf("the overlay holds records up to %d, want at least %d", drLast, recs.Last+extra)
	}

	// Run again: the VM comes back from its overlays, with every record.
	os.Rename(serial, serial+".1")
	out := testkit.MustRun(t, "failover", "--runbook", rbPath)
	t.Logf("re-run:\n%s", out)
	ticks := waitTicks(t, serial, 5)
	after := overlayRecords(t, p, overlay, "after-rerun")
	lost := 0
	for seq, counter := range written {
		if c, ok := after[seq]; !ok || c != counter {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("the re-run lost %d of the %d records the DR guest wrote (%d..%d); the overlay now ends at %d", lost, len(written), recs.Last+1, drLast, maxSeq(after))
	}
	log := string(mustRead(t, serial))
	if !strings.Contains(out, "boots from its disk overlays") || !strings.Contains(out, "no memory state") {
		t.Errorf("the re-run does not say it boots from the overlays:\n%s", out)
	}
	// A cold boot: the workload scans its ring and resumes after the DR
	// guest's last record; its counter starts again from zero.
	if !strings.Contains(log, "RESUME ") || ticks[0].Seq < drLast || ticks[0].Counter >= cutCounter {
		t.Errorf("the VM did not boot from the overlays (first tick %+v, DR's last record %d, counter at the cut %d):\n%s", ticks[0], drLast, cutCounter, log)
	}

	// Starting over is explicit, and refused while the VM runs.
	code, out := testkit.Run(t, "failover", "--runbook", rbPath, "--discard-dr-writes", "guest-1")
	if code == 0 || !strings.Contains(out, "still runs") {
		t.Errorf("--discard-dr-writes with the VM running: exit %d\n%s", code, out)
	}
	quitDRVM(t, p)
	kept := overlayRecords(t, p, overlay, "kept")
	os.Rename(serial, serial+".2")
	out = testkit.MustRun(t, "failover", "--runbook", rbPath, "--discard-dr-writes", "guest-1")
	t.Logf("--discard-dr-writes:\n%s", out)
	aside, _ := filepath.Glob(p.path("failover/_discarded/guest-1-*/disk-disk0.qcow2"))
	if len(aside) != 1 || !strings.Contains(out, filepath.Dir(aside[0])) {
		t.Fatalf("overlays moved aside: %v\n%s", aside, out)
	}
	moved := overlayRecords(t, p, aside[0], "aside")
	for seq, counter := range kept {
		if moved[seq] != counter {
			t.Fatalf("record %d is not in the overlays moved aside", seq)
		}
	}
	// Resumed from the replica's epoch with its memory.
	ticks = waitTicks(t, serial, 5)
	log = string(mustRead(t, serial))
	if strings.Contains(log, "START") || strings.Contains(log, "RESUME") || ticks[0].Counter < cutCounter || ticks[0].Seq > recs.Last+5 {
		t.Errorf("after --discard-dr-writes the VM did not resume the replica's epoch (first tick %+v, counter at the cut %d, replica's last record %d):\n%s", ticks[0], cutCounter, recs.Last, log)
	}
}

// waitSeq waits until the DR guest's ticks report record seq written.
func waitSeq(t *testing.T, serial string, seq uint64) {
	t.Helper()
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if ticks := guest.ParseTicks(mustRead(t, serial)); len(ticks) > 0 && ticks[len(ticks)-1].Seq >= seq {
			return
		}
	}
	t.Fatalf("the DR guest did not write record %d:\n%s", seq, mustRead(t, serial))
}

func waitTicks(t *testing.T, serial string, n int) []guest.Tick {
	t.Helper()
	var ticks []guest.Tick
	for deadline := time.Now().Add(60 * time.Second); len(ticks) < n && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ticks = guest.ParseTicks(mustRead(t, serial))
	}
	if len(ticks) < n {
		t.Fatalf("the DR guest does not run (%d ticks):\n%s", len(ticks), mustRead(t, serial))
	}
	return ticks
}

// quitDRVM stops the DR guest and quits its QEMU over QMP, as an operator
// would, and waits until the process is gone.
func quitDRVM(t *testing.T, p *pair) {
	t.Helper()
	pid := 0
	for _, line := range strings.Split(string(mustRead(t, p.path("failover/run.log"))), "\n") {
		var r struct {
			Step string
			PID  int
		}
		if json.Unmarshal([]byte(line), &r) == nil && r.Step == "start:guest-1" && r.PID > 0 {
			pid = r.PID
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := qmp.Dial(ctx, p.path("failover/guest-1/qmp.sock"), qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	s.Execute(ctx, "quit", nil, nil) // QEMU may close the socket before it answers
	s.Close()
	for syscall.Kill(pid, 0) == nil {
		if ctx.Err() != nil {
			t.Fatalf("QEMU (pid %d) did not quit", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// overlayRecords reads the record ring of a qcow2 overlay (through its
// backing file) and returns each record's counter by seq; the ring must
// verify.
func overlayRecords(t *testing.T, p *pair, overlay, name string) map[uint64]uint64 {
	t.Helper()
	raw := p.path(name + ".raw")
	defer os.Remove(raw)
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", overlay, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v: %s", overlay, err, out)
	}
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	if _, err := guest.VerifyRecords(f, st.Size()); err != nil {
		t.Fatalf("%s: %v", overlay, err)
	}
	got := map[uint64]uint64{}
	err = record.Scan(f, st.Size(), make([]byte, 256*record.Size), func(_ int, b []byte) error {
		if r, err := record.Decode(b); err == nil {
			got[r.Seq] = r.Counter
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func maxSeq(recs map[uint64]uint64) uint64 {
	var m uint64
	for s := range recs {
		m = max(m, s)
	}
	return m
}
