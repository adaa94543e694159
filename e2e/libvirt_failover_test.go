package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
)

// TestLibvirtFailover protects the test guest as a libvirt domain for a
// few epochs, drills a failover into libvirt (a transient, isolated
// domain that is gone afterwards), loses the protected domain, and fails
// it over into libvirt under another name: the domain is defined from the
// replicated definition, runs, and its guest continues from the cut
// (counter and records).
func TestLibvirtFailover(t *testing.T) {
	start := time.Now()
	d := guest.ProtectedDomain(t, 128, map[string]string{"rate": "50"})
	t.Logf("domain %s runs the workload (%v)", d.Name, time.Since(start).Round(time.Millisecond))
	p := newPair(t, []vmSpec{{name: "guest-1", extra: fmt.Sprintf("libvirt = %q\ndomain = %q\nmin_interval = \"1s\"", hosttools.LibvirtURI, d.Name)}})
	p.startReceiver()
	for e := 1; e <= 3; e++ {
		testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
		t.Logf("epoch %d committed", p.manifest("guest-1").Epoch)
	}
	p.replicaFile("guest-1", "blob", "libvirt-domain.xml")
	dr := d.Name + "-dr"
	virsh := func(args ...string) {
		exec.Command("virsh", append([]string{"-c", hosttools.LibvirtURI}, args...)...).Run()
	}
	t.Cleanup(func() {
		virsh("destroy", dr+"-drill")
		virsh("destroy", dr)
		virsh("undefine", dr)
	})
	rbPath := p.write("runbook.toml", fmt.Sprintf(`
name = "site-b"
receiver_config = %q
work_dir = "failover"

[[group]]
name = "apps"
vms = ["guest-1"]

[[vm]]
name = "guest-1"
libvirt = %q
domain = %q
  [[vm.disk]]
  replica = "vda"
  [[vm.disk]]
  replica = "vdb"
  [[vm.check]]
  kind = "running"
  timeout = "30s"
  [[vm.check]]
  kind = "serial"
  file = "failover/guest-1/serial0.log"
  match = "^TICK "
  timeout = "60s"
`, p.recvCfg, hosttools.LibvirtURI, dr))

	// A drill: a transient copy on no network, gone afterwards.
	drill := strings.Replace(string(mustRead(t, rbPath)), "failover/guest-1/serial0.log", "failover/_drill/guest-1/serial0.log", 1)
	drillPath := p.write("drill.toml", drill)
	out := testkit.MustRun(t, "failover", "--runbook", drillPath, "--drill")
	t.Logf("drill:\n%s", out)
	if !strings.Contains(out, "libvirt domain "+dr+"-drill restored") {
		t.Fatalf("the drill did not restore a libvirt domain:\n%s", out)
	}
	if all := hosttools.Virsh(t, "list", "--all", "--name"); strings.Contains(all, dr) {
		t.Fatalf("the drill left a domain behind:\n%s", all)
	}
	t.Logf("the drill left no domain behind")

	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	recs := p.checkReplicaRecords("guest-1")
	m := p.manifest("guest-1")
	tks := d.Ticks()
	last := tks[len(tks)-1]
	hosttools.Virsh(t, "destroy", d.Name)
	t.Logf("epoch %d (records %d..%d) committed; protected domain lost at tick %d", m.Epoch, recs.First, recs.Last, last.Counter)

	t0 := time.Now()
	code, out := testkit.Run(t, "failover", "--runbook", rbPath)
	if code != 0 {
		ls, _ := exec.Command("ls", "-la", p.path("failover/guest-1")).CombinedOutput()
		x, _ := exec.Command("virsh", "-c", hosttools.LibvirtURI, "dumpxml", dr).CombinedOutput()
		t.Fatalf("failover: exit %d:\n%s\n%s\n%s", code, out, ls, x)
	}
	t.Logf("failover (%v):\n%s", time.Since(t0).Round(time.Millisecond), out)
	if st := strings.TrimSpace(hosttools.Virsh(t, "domstate", dr)); st != "running" {
		t.Fatalf("domain %s is %s after the failover", dr, st)
	}
	if !strings.Contains(hosttools.Virsh(t, "list", "--persistent", "--name"), dr) {
		t.Errorf("domain %s is not defined (persistent) at the DR site", dr)
	}
	g := &guest.Domain{Name: dr, Serial: p.path("failover/guest-1/serial0.log")}
	tk, err := g.WaitTicks(5, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// From the cut: not rebooted (the counter and the record sequence go
	// on from the replica's), and not from later than the protected site.
	// A record whose write was in flight at the cut is on the disk while
	// the guest has not yet seen it complete: its first tick may say one
	// less.
	if tk[0].Counter <= 10 || tk[0].Counter > last.Counter+1 || tk[0].Seq+1 < recs.Last {
		t.Fatalf("the DR guest ticks from counter %d seq %d; the protected one reached %d, the replica holds records up to %d", tk[0].Counter, tk[0].Seq, last.Counter, recs.Last)
	}
	t.Logf("the guest continues from the cut as libvirt domain %s: counter %d..%d, records from %d", dr, tk[0].Counter, tk[len(tk)-1].Counter, tk[0].Seq)
	t.Logf("total %v", time.Since(start).Round(time.Second))
}
