package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
)

// TestLibvirtDomainLifecycle protects a persistent libvirt domain with a
// running sender, then has libvirt stop it (destroy, then a shutdown):
// each time the sender's status and "drsync status" say the
// domain is shut off and protection waits, no epoch is attempted and no
// failure is counted while it is off, and after "virsh start" protection
// resumes by itself with a full epoch that commits and verifies.
// (Migration to another host needs a second libvirtd: its events are
// shown through the pure decision, lifecycle TestScripts, and a scripted
// event feed, agent TestDomainGate.)
func TestLibvirtDomainLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest three times")
	}
	start := time.Now()
	d := guest.ProtectedDomain(t, 128, map[string]string{"rate": "50"})
	// Persistent, so that it can be started again once stopped.
	xml := filepath.Join(d.Dir, "persistent.xml")
	if err := os.WriteFile(xml, []byte(hosttools.Virsh(t, "dumpxml", d.Name)), 0o644); err != nil {
		t.Fatal(err)
	}
	hosttools.Virsh(t, "define", xml)
	t.Cleanup(func() {
		// Transient again (ProtectedDomain's cleanup destroys it), or gone.
		exec.Command("virsh", "-c", hosttools.LibvirtURI, "undefine", d.Name).Run()
	})
	t.Logf("domain %s runs, persistent (%v)", d.Name, time.Since(start).Round(time.Millisecond))

	spec := vmSpec{name: "guest-1", extra: fmt.Sprintf("libvirt = %q\ndomain = %q\nmin_interval = \"1s\"", hosttools.LibvirtURI, d.Name)}
	p := newPair(t, []vmSpec{spec})
	p.startReceiver()
	snd := testkit.Start(t, p.path("sender.log"), "send", "--config", p.sendCfg)
	defer snd.Kill()
	if !snd.WaitLog("epoch committed", 2*time.Minute) {
		t.Fatalf("no epoch committed:\n%s", snd.Log())
	}
	t.Logf("first epoch %d committed", p.manifest("guest-1").Epoch)

	domain := func() map[string]any {
		m, _ := p.senderStatus("guest-1")["domain"].(map[string]any)
		return m
	}
	waitDomain := func(state string, d time.Duration) map[string]any {
		t.Helper()
		deadline := time.Now().Add(d)
		for {
			if m := domain(); m != nil && m["state"] == state {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("status does not show the domain %s within %v: %v\n%s", state, d, domain(), snd.Log())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	failures := func() float64 { f, _ := p.senderStatus("guest-1")["consecutive_failures"].(float64); return f }

	// The test guest has no ACPI handler, so "virsh shutdown" is ignored;
	// QEMU told to quit stops the domain as a shutdown does (libvirt
	// reports STOPPED/SHUTDOWN, shut off with reason "shutdown").
	for round, stop := range [][]string{{"destroy", d.Name}, {"qemu-monitor-command", d.Name, `{"execute":"quit"}`}} {
		before := p.manifest("guest-1").Epoch
		logBefore := len(snd.Log())
		// QEMU may quit before it answers: the command's status says nothing.
		out, err := exec.Command("virsh", append([]string{"-c", hosttools.LibvirtURI}, stop...)...).CombinedOutput()
		if err != nil && round == 0 {
			t.Fatalf("virsh %s: %v\n%s", strings.Join(stop, " "), err, out)
		}
		t.Logf("round %d: virsh %s", round+1, strings.Join(stop, " "))
		off := waitDomain("shut-off", 90*time.Second)
		detail, _ := off["detail"].(string)
		t.Logf("round %d: sender status: %s", round+1, detail)
		if want := []string{"destroyed", "shut down"}[round]; !strings.Contains(detail, want) || !strings.Contains(detail, "waiting for it to start") || off["held"] != true {
			t.Errorf("round %d: status detail %q, held %v", round+1, detail, off["held"])
		}
		if st := testkit.MustRun(t, "status", "--config", p.sendCfg); !strings.Contains(st, detail) {
			t.Errorf("round %d: drsync status does not say why protection waits:\n%s", round+1, st)
		}
		// Off for a while: nothing is attempted, nothing fails.
		f0 := failures()
		time.Sleep(8 * time.Second)
		since := snd.Log()[logBefore:]
		if n := strings.Count(since, "epoch failed"); n > 0 || failures() != f0 || f0 != 0 {
			t.Errorf("round %d: %d failed epochs, consecutive failures %v -> %v while the domain was off:\n%s", round+1, n, f0, failures(), since)
		}
		if n := strings.Count(since, "msg=cut "); n > 0 {
			t.Errorf("round %d: %d cuts attempted while the domain was off", round+1, n)
		}
		if got := p.manifest("guest-1").Epoch; got > before+1 {
			// One epoch in flight at the stop may still commit.
			t.Errorf("round %d: epochs committed while off: %d -> %d", round+1, before, got)
		}

		hosttools.Virsh(t, "start", d.Name)
		t.Logf("round %d: virsh start", round+1)
		on := waitDomain("running", 30*time.Second)
		t.Logf("round %d: sender status: %s", round+1, on["detail"])
		offEpoch := p.manifest("guest-1").Epoch
		deadline := time.Now().Add(4 * time.Minute)
		for p.manifest("guest-1").Epoch <= offEpoch {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: no epoch committed after the domain started:\n%s", round+1, snd.Log()[logBefore:])
			}
			time.Sleep(200 * time.Millisecond)
		}
		since = snd.Log()[logBefore:]
		if !strings.Contains(since, "compares every block") {
			t.Errorf("round %d: the first epoch after the restart is not a full one:\n%s", round+1, since)
		}
		t.Logf("round %d: protection resumed: epoch %d committed (full), consecutive failures %v", round+1, p.manifest("guest-1").Epoch, failures())
		if _, err := d.WaitTicks(len(d.Ticks())+5, 3*time.Minute); err != nil {
			t.Fatalf("round %d: the guest does not run after its start: %v", round+1, err)
		}
	}
	snd.Signal(syscall.SIGTERM)
	if _, err := snd.Wait(time.Minute); err != nil {
		t.Fatalf("sender did not stop: %v", err)
	}
	// The receiver too: a stopped receiver has applied what it committed.
	p.rcv.Signal(syscall.SIGTERM)
	if _, err := p.rcv.Wait(2 * time.Minute); err != nil {
		t.Fatalf("receiver did not stop: %v", err)
	}
	p.verify("guest-1")
	d.CheckCleanView(t, 1)
	t.Logf("total %v", time.Since(start).Round(time.Second))
}
