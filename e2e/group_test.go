package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
)

// TestGroupSendOnce protects two running guests as one consistency group
// with one drsync send: each VM's epoch comes from one group cut, both
// replicas commit and verify, and both guests run on afterwards.
func TestGroupSendOnce(t *testing.T) {
	vms := map[string]*guest.VM{}
	var specs []vmSpec
	for _, n := range []string{"guest-a", "guest-b"} {
		t.Logf("booting %s", n)
		vm, _ := liveGuest(t, 256, nil)
		vms[n] = vm
		specs = append(specs, vmSpec{name: n, qmp: vm.QMPSocket, disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}})
	}
	p := newPair(t, specs, "[[group]]\nname = \"pair\"\nvms = [\"guest-a\", \"guest-b\"]\nrpo = \"1m\"")
	p.startReceiver()
	for round := 1; round <= 2; round++ {
		t.Logf("round %d: drsync send --once", round)
		out := testkit.MustRun(t, "send", "--once", "--log-level", "info", "--config", p.sendCfg)
		if !strings.Contains(out, "group cut") {
			t.Errorf("round %d: the sender's log mentions no group cut:\n%s", round, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "group") {
				t.Logf("sender: %s", l)
			}
		}
		for n, vm := range vms {
			recs := p.checkReplicaRecords(n)
			t.Logf("round %d: %s replica verified, records %d..%d", round, n, recs.First, recs.Last)
			c := len(vm.Ticks())
			if _, err := vm.WaitTicks(c+3, 30*time.Second); err != nil {
				t.Errorf("%s does not run after the group cut: %v", n, err)
			}
		}
	}
}
