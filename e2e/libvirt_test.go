package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
)

// TestLibvirtDomain protects the test guest, run as a libvirt domain, by
// domain name: disks and block nodes come from the domain. Several epochs
// commit; a sender SIGKILLed in the middle of epochs is restarted; after
// each run libvirt's view of the domain (virsh domblklist, blockjob,
// checkpoint-list) and QEMU's show nothing of drsync's; every committed
// epoch verifies and holds a consistent record ring; the guest runs on.
func TestLibvirtDomain(t *testing.T) {
	start := time.Now()
	d := guest.ProtectedDomain(t, 128, map[string]string{"rate": "50"})
	t.Logf("domain %s runs the workload (%v)", d.Name, time.Since(start).Round(time.Millisecond))
	spec := vmSpec{name: "guest-1", extra: fmt.Sprintf("libvirt = %q\ndomain = %q\nmin_interval = \"1s\"", hosttools.LibvirtURI, d.Name)}
	p := newPair(t, []vmSpec{spec})
	p.startReceiver()

	out := testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	prev := p.checkReplicaRecords("guest-1")
	t.Logf("first epoch %d committed; replica records %d..%d", p.manifest("guest-1").Epoch, prev.First, prev.Last)
	if testing.Verbose() {
		t.Logf("sender:\n%s", out)
	}
	for _, tg := range p.manifest("guest-1").Targets {
		t.Logf("replica target %s %s", tg.Kind, tg.Name)
	}
	p.replicaFile("guest-1", "disk", "vdb") // both disks found from the domain
	d.CheckCleanView(t, 1)

	for round := 1; round <= 3; round++ {
		snd := testkit.Start(t, p.path(fmt.Sprintf("sender-%d.log", round)), "send", "--config", p.sendCfg, "--log-level", "debug")
		// Two cuts, then a kill just after the third: its snapshot is
		// open in QEMU and being read.
		deadline := time.Now().Add(3 * time.Minute)
		for strings.Count(snd.Log(), "msg=cut ") < 3 {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: no third cut:\n%s", round, snd.Log())
			}
			time.Sleep(20 * time.Millisecond)
		}
		before := p.manifest("guest-1").Epoch
		snd.Kill()
		t.Logf("round %d: sender SIGKILLed with epoch %d committed", round, before)
		p.verify("guest-1")
		out := testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
		if strings.Contains(out, "removing what an earlier sender left") {
			t.Logf("round %d: the restarted sender removed leftovers of the killed one", round)
		}
		d.CheckCleanView(t, 1)
		recs := p.checkReplicaRecords("guest-1")
		after := p.manifest("guest-1").Epoch
		if after <= before || recs.Last < prev.Last {
			t.Fatalf("round %d: epoch %d -> %d, records %d -> %d", round, before, after, prev.Last, recs.Last)
		}
		t.Logf("round %d: restarted sender committed epoch %d; replica records %d..%d", round, after, recs.First, recs.Last)
		prev = recs
	}
	if st := strings.TrimSpace(hosttools.Virsh(t, "domstate", d.Name)); st != "running" {
		t.Errorf("domain %s after the test", st)
	}
	n := len(d.Ticks())
	if _, err := d.WaitTicks(n+10, 30*time.Second); err != nil {
		t.Fatalf("the guest no longer runs: %v", err)
	}
	t.Logf("the guest runs on (%d ticks)", len(d.Ticks()))

	// libvirt stops the domain under a running sender: the sender's status
	// names what happened and that protection waits, and the replica
	// stays whole.
	snd := testkit.Start(t, p.path("sender-end.log"), "send", "--config", p.sendCfg)
	if !snd.WaitLog("epoch committed", 90*time.Second) {
		t.Fatalf("no epoch before the domain stops:\n%s", snd.Log())
	}
	hosttools.Virsh(t, "destroy", d.Name)
	t.Logf("domain destroyed under the sender")
	deadline := time.Now().Add(60 * time.Second)
	for {
		dom, _ := p.senderStatus("guest-1")["domain"].(map[string]any)
		msg, _ := dom["detail"].(string)
		if strings.Contains(msg, "destroyed") && strings.Contains(msg, "waiting for it to start") {
			t.Logf("sender status: %s", msg)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status does not say the domain stopped: %q\n%s", msg, snd.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
	snd.Kill()
	p.verify("guest-1")
	t.Logf("total %v", time.Since(start).Round(time.Second))
}

// TestLibvirtGuestGuard SIGKILLs the sender right after a cut's migration,
// while its domain is stopped: the guest guard resumes the domain through
// libvirt, and libvirt shows it running again.
func TestLibvirtGuestGuard(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	d := guest.ProtectedDomain(t, 128, nil)
	spec := vmSpec{name: "guest-1", extra: fmt.Sprintf("libvirt = %q\ndomain = %q", hosttools.LibvirtURI, d.Name)}
	p := newPair(t, []vmSpec{spec})
	p.startReceiver()
	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	t.Logf("first epoch committed")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	watch, err := libvirtvm.Dial(ctx, hosttools.LibvirtURI, d.Name, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	events := watch.Subscribe("STOP", "RESUME")
	defer events.Close()
	next := func(name string) (qmp.Event, error) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return events.Wait(ctx, func(e qmp.Event) bool { return e.Name == name })
	}
	killed := func(c *exec.Cmd) error {
		c.Env = append(os.Environ(), "DRSYNC_FAULT=kill-after-migration")
		return nil
	}
	for round := 1; round <= 3; round++ {
		snd := testkit.StartWrapped(t, p.path(fmt.Sprintf("sender-killed-%d.log", round)), killed, "send", "--once", "--config", p.sendCfg)
		if code, err := snd.Wait(2 * time.Minute); err != nil || code != -1 {
			t.Fatalf("round %d: the sender was not killed at its cut (exit %d, %v):\n%s", round, code, err, snd.Log())
		}
		stop, err := next("STOP")
		if err != nil {
			t.Fatalf("round %d: no STOP from the cut: %v", round, err)
		}
		resume, err := next("RESUME")
		if err != nil {
			t.Fatalf("round %d: the domain was not resumed within 10 s of the sender's death (%s): %v\n%s", round,
				strings.TrimSpace(hosttools.Virsh(t, "domstate", "--reason", d.Name)), err, snd.Log())
		}
		t.Logf("round %d: guest paused %v; resumed by the guard through libvirt", round, resume.At.Sub(stop.At).Round(time.Millisecond))
		if st := strings.TrimSpace(hosttools.Virsh(t, "domstate", d.Name)); st != "running" {
			t.Errorf("round %d: libvirt shows the domain %s", round, st)
		}
	}
	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	d.CheckCleanView(t, 1)
	p.checkReplicaRecords("guest-1")
}
