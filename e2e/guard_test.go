package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
)

// TestLiveGuestGuard SIGKILLs the sender at the worst moment of a cut, ten
// times: right after QEMU reports the migration complete, when the guest
// is stopped and only the sender's cont would resume it. Each time the
// guest must run again within about a second (measured by QEMU's own STOP
// and RESUME events on a second QMP socket), status must tell that it
// happened, and the next sender must replicate as usual. A guest the
// operator paused stays paused, and status says so.
func TestLiveGuestGuard(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	mon := filepath.Join(hosttools.ShortTempDir(t, "mon"), "qmp")
	vm, _ := guest.ProtectedWith(t, 256, nil, "-qmp", "unix:"+mon+",server=on,wait=off")
	p := livePair(t, vm, "")
	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)

	ctx := context.Background()
	watch, err := qmp.Dial(ctx, mon, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	events := watch.Subscribe("STOP", "RESUME")
	defer events.Close()
	next := func(name string, d time.Duration) (qmp.Event, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return events.Wait(ctx, func(e qmp.Event) bool { return e.Name == name })
	}

	const rounds = 10
	// The guard must resume the guest within about a second; the margin
	// is for a loaded machine (its own figures are tens of milliseconds).
	const limit = 1500 * time.Millisecond
	var pauses []time.Duration
	killed := func(c *exec.Cmd) error {
		c.Env = append(os.Environ(), "DRSYNC_FAULT=kill-after-migration")
		return nil
	}
	for round := 1; round <= rounds; round++ {
		snd := testkit.StartWrapped(t, p.path(fmt.Sprintf("sender-killed-%d.log", round)), killed, "send", "--once", "--config", p.sendCfg, "--log-level", "debug")
		if code, err := snd.Wait(2 * time.Minute); err != nil || code != -1 {
			t.Fatalf("round %d: the sender was not killed at its cut (exit %d, %v):\n%s", round, code, err, snd.Log())
		}
		stop, err := next("STOP", 10*time.Second)
		if err != nil {
			t.Fatalf("round %d: no STOP from the cut: %v\n%s", round, err, snd.Log())
		}
		// Far more than the limit: a guest left paused is told apart from
		// a slow guard.
		resume, err := next("RESUME", 10*time.Second)
		if err != nil {
			var st struct{ Status string }
			watch.Execute(ctx, "query-status", nil, &st)
			t.Fatalf("round %d: the guest was not resumed within 10 s of the sender's death (status %q): %v\n%s", round, st.Status, err, snd.Log())
		}
		pause := resume.At.Sub(stop.At)
		pauses = append(pauses, pause)
		if pause > limit {
			t.Errorf("round %d: guest paused %v after the sender died (limit %v)\n%s", round, pause, limit, snd.Log())
		}
		// Status tells what happened, once the guard has written it down
		// (just after its cont).
		type guestRow struct {
			Guest *struct {
				Paused       bool   `json:"paused"`
				GuardResumes uint64 `json:"guard_resumes"`
			} `json:"guest"`
		}
		var rows []guestRow
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			rows = nil
			if err := json.Unmarshal([]byte(testkit.MustRun(t, "status", "--json", "--config", p.sendCfg)), &rows); err != nil {
				t.Fatal(err)
			}
			if len(rows) == 1 && rows[0].Guest != nil && rows[0].Guest.GuardResumes >= uint64(round) || time.Now().After(deadline) {
				break
			}
		}
		if len(rows) != 1 || rows[0].Guest == nil || rows[0].Guest.GuardResumes != uint64(round) || rows[0].Guest.Paused {
			t.Errorf("round %d: status --json guest: %+v", round, rows)
		}
		out := testkit.MustRun(t, "status", "--config", p.sendCfg)
		if !strings.Contains(out, "the guard resumed it at ") || !strings.Contains(out, fmt.Sprintf("(%d time(s) in all)", round)) {
			t.Errorf("round %d: status does not tell of the guard's resume:\n%s", round, out)
		}
		if round == rounds {
			t.Logf("status after the last kill:\n%s\nthe guard said:\n%s", out, grepLines(snd.Log(), "guard:", 3))
		}
	}
	t.Logf("guest pause when the sender was SIGKILLed after the migration, %d rounds: median %v, max %v (all: %v)",
		rounds, median(pauses).Round(time.Millisecond), slices.Max(pauses).Round(time.Millisecond), pauses)

	// The next sender cleans up and replicates as usual; the guest ran on.
	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	p.checkReplicaRecords("guest-1")
	n := len(vm.Ticks())
	if _, err := vm.WaitTicks(n+5, 30*time.Second); err != nil {
		t.Fatalf("the guest no longer runs: %v", err)
	}

	// A guest the operator paused is neither cut nor resumed, and status
	// says it is paused.
	if err := watch.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	if code, out := testkit.Run(t, "send", "--once", "--retries", "0", "--config", p.sendCfg); code == 0 || !strings.Contains(out, "not running") {
		t.Errorf("a sender cut an operator-paused guest: exit %d\n%s", code, out)
	}
	var st struct{ Status string }
	if err := watch.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "paused" {
		t.Errorf("operator-paused guest: status %q, %v", st.Status, err)
	}
	if out := testkit.MustRun(t, "status", "--config", p.sendCfg); !strings.Contains(out, "GUEST PAUSED") {
		t.Errorf("status does not show the paused guest:\n%s", out)
	} else {
		t.Logf("status of an operator-paused guest:\n%s", out)
	}
	if err := watch.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	if out := testkit.MustRun(t, "status", "--config", p.sendCfg); strings.Contains(out, "GUEST PAUSED") {
		t.Errorf("status still shows a paused guest after it runs and an epoch committed:\n%s", out)
	}
}
