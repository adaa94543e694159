package colo_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/colo"
	"github.com/drsync/drsync/migstream"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit/guest"
)

// never is an x-checkpoint-delay (ms, a day) that keeps QEMU's own timer
// from asking for checkpoints: drsync asks by setting the parameter.
const never = 24 * 3600 * 1000

// qmpQuick runs one QMP command that must answer promptly: a monitor that
// hangs fails the test here, naming the step.
func qmpQuick(t *testing.T, s *qmp.Session, step, cmd string, args, reply any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Execute(ctx, cmd, args, reply); err != nil {
		t.Fatalf("%s: %s: %v", step, cmd, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("%s: %s took %v: the monitor stalled", step, cmd, d)
	}
}

func runState(t *testing.T, s *qmp.Session, step string) string {
	t.Helper()
	var st struct{ Status string }
	qmpQuick(t, s, step, "query-status", nil, &st)
	return st.Status
}

func migStatus(t *testing.T, s *qmp.Session, step string) string {
	t.Helper()
	var m struct{ Status string }
	qmpQuick(t, s, step, "query-migrate", nil, &m)
	return m.Status
}

// TestCheckpointsOfARunningGuest is the receiving side of a COLO migration
// of the test guest: it parses the first pass and consecutive checkpoints
// with migstream, answers every message, asks for each checkpoint itself
// (or, with COLO_TRIGGER=timer, leaves that to QEMU's timer), shows the
// guest runs while a request waits for the reply, and checks that every
// checkpoint's RAM part is a dirty set and the monitor answers after it.
// Then it leaves COLO and shows a plain migration works again. QEMU 7.2
// wedges (monitor and guest) within a few checkpoints; the test then
// reports what it saw and skips, see the package documentation.
func TestCheckpointsOfARunningGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	vm, dir := guest.Protected(t, 256, map[string]string{"dirty_mib": "64", "dirty_rate_kib": "256"})
	ctx := context.Background()
	s, err := qmp.Dial(ctx, vm.QMPSocket, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	qmpQuick(t, s, "setup", "migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
		{"capability": "x-colo", "state": true}, {"capability": "events", "state": true}}}, nil)
	// COLO_TRIGGER=timer leaves the checkpoints to QEMU's own timer.
	timerTrigger := os.Getenv("COLO_TRIGGER") == "timer"
	delay := never
	if timerTrigger {
		delay = 1000
	}
	qmpQuick(t, s, "setup", "migrate-set-parameters", map[string]any{"x-checkpoint-delay": delay}, nil)

	sock := filepath.Join(dir, "colo.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	qmpQuick(t, s, "first pass", "migrate", map[string]any{"uri": "unix:" + sock}, nil)
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	flat := migstream.NewFlat()
	defer flat.Close()
	rcv := colo.NewReceiver(conn, flat, migstream.Options{})
	defer rcv.Close()
	start := time.Now()
	res, err := rcv.Full()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first pass: %d bytes, %d pages, %d zero pages in %v; skeleton %d bytes",
		res.Stats.StreamBytes, res.Stats.Pages, res.Stats.ZeroPages, time.Since(start), len(res.Skeleton))
	// QEMU reaches "colo" and waits for us with the guest stopped.
	deadline := time.Now().Add(10 * time.Second)
	for migStatus(t, s, "after the first pass") != "colo" {
		if time.Now().After(deadline) {
			t.Fatalf("migration never reached status colo")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := runState(t, s, "before ready"); st == "running" {
		t.Fatalf("guest %s before checkpoint-ready, want stopped", st)
	}
	if err := rcv.Ready(); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, s, "after ready")
	t.Logf("guest runs again after checkpoint-ready")

	const checkpoints = 8
	for i := 1; i <= checkpoints; i++ {
		time.Sleep(300 * time.Millisecond)
		step := fmt.Sprintf("checkpoint %d", i)
		if !timerTrigger {
			// Setting the parameter while in COLO fires the checkpoint timer now.
			qmpQuick(t, s, step, "migrate-set-parameters", map[string]any{"x-checkpoint-delay": never}, nil)
		}
		if err := rcv.WaitRequest(); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if i == 2 {
			// The guest runs until we reply: holding the reply holds the cut.
			time.Sleep(500 * time.Millisecond)
			if st := runState(t, s, step+" request pending"); st != "running" {
				t.Fatalf("%s: guest %s while the request waits for our reply", step, st)
			}
		}
		// No monitor command between reply and loaded: the disks' cut would
		// go there, but the wedge below comes without it too.
		cp, err := rcv.Take(func(*colo.Checkpoint) error { return nil })
		if err != nil {
			t.Fatalf("%s: %v\nQEMU stderr:\n%s", step, err, vm.Stderr())
		}
		t.Logf("%s: RAM part %d bytes (%d pages, %d zero), device state %d bytes, reply to loaded %v",
			step, cp.RAM.StreamBytes, cp.RAM.Pages, cp.RAM.ZeroPages, len(cp.DeviceState), cp.Stopped)
		if !answers(s, 5*time.Second) {
			t.Logf("%s: the monitor stopped answering after vmstate-loaded", step)
			before := len(vm.Ticks())
			time.Sleep(3 * time.Second)
			t.Logf("guest console ticks in the next 3 s: %d", len(vm.Ticks())-before)
			rcv.Close()
			t.Logf("closed the migration socket; monitor answers within 10 s: %v", answers(s, 10*time.Second))
			t.Skipf("QEMU %s wedged its monitor in COLO checkpoint %d (see the package documentation)", s.Version(), i)
		}
		waitRunning(t, s, step)
		if full := res.Stats.StreamBytes; cp.RAM.StreamBytes >= full/4 {
			t.Errorf("%s: RAM part %d bytes is not a dirty set (first pass %d)", step, cp.RAM.StreamBytes, full)
		}
	}

	// Leaving COLO: the source waits for x-colo-lost-heartbeat, then
	// completes the migration and keeps the guest running.
	qmpQuick(t, s, "leave", "x-colo-lost-heartbeat", nil, nil)
	deadline = time.Now().Add(10 * time.Second)
	for st := migStatus(t, s, "leave"); st != "completed"; st = migStatus(t, s, "leave") {
		if time.Now().After(deadline) {
			t.Fatalf("migration status %s after x-colo-lost-heartbeat, want completed", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitRunning(t, s, "leave")
	t.Logf("left COLO: migration completed, guest running")

	// The full-migrate path works again once x-colo is off.
	qmpQuick(t, s, "fallback", "migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
		{"capability": "x-colo", "state": false}}}, nil)
	sock2 := filepath.Join(dir, "plain.sock")
	ln2, err := net.Listen("unix", sock2)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	qmpQuick(t, s, "fallback", "migrate", map[string]any{"uri": "unix:" + sock2}, nil)
	conn2, err := ln2.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	res2, err := migstream.Parse(conn2, nil, migstream.Options{})
	if err != nil {
		t.Fatalf("plain migration after COLO: %v", err)
	}
	qmpQuick(t, s, "fallback", "cont", nil, nil)
	waitRunning(t, s, "fallback")
	t.Logf("plain migration after COLO: %d bytes parsed; guest running", res2.Stats.StreamBytes)
}

func waitRunning(t *testing.T, s *qmp.Session, step string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := runState(t, s, step)
		if st == "running" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: guest %s, want running", step, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// answers says whether the monitor answers query-status within d.
func answers(s *qmp.Session, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return s.Execute(ctx, "query-status", nil, nil) == nil
}
