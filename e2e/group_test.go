package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
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

// TestGroupTwoSenders protects two running guests of one group with two
// drsync send processes, as on two hosts (own state directories): the
// one leads the group's cuts, the other follows over QUIC with mutual
// TLS. Both replicas commit epochs of the same cuts. Then the follower is
// SIGSTOPped: the leader's cut aborts within its timeouts and its guest
// runs on; after SIGCONT the next group cut succeeds.
func TestGroupTwoSenders(t *testing.T) {
	vms := map[string]*guest.VM{}
	var specs []vmSpec
	for _, n := range []string{"guest-a", "guest-b"} {
		t.Logf("booting %s", n)
		vm, _ := liveGuest(t, 256, nil)
		vms[n] = vm
		specs = append(specs, vmSpec{name: n, qmp: vm.QMPSocket, extra: `min_interval = "1s"`, disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}})
	}
	p := newPair(t, specs)
	p.startReceiver()
	gport := freePort(t)
	group := func(role string) string {
		return fmt.Sprintf("[[group]]\nname = \"pair\"\nvms = [\"guest-a\", \"guest-b\"]\nrpo = \"1m\"\n%s = \"127.0.0.1:%d\"\npeers = [%q]\nstep_timeout = \"1s\"", role, gport, p.fpA)
	}
	// Both senders use site-a's key: the receiver authorises it for both VMs.
	cfgA := p.senderConfig("sender-a.toml", "site-a", p.port, specs[:1], group("listen"))
	cfgB := p.senderConfig("sender-b.toml", "site-a", p.port, specs[1:], group("leader"))
	b, err := os.ReadFile(cfgB)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cfgB, []byte(strings.Replace(string(b), `dir = "state"`, `dir = "state-b"`, 1)), 0o644)

	t.Logf("starting the leading and the following sender")
	leader := testkit.Start(t, p.path("sender-a.log"), "send", "--config", cfgA)
	follower := testkit.Start(t, p.path("sender-b.log"), "send", "--config", cfgB)
	defer leader.Kill()
	defer follower.Kill()
	countCuts := func() int { return strings.Count(leader.Log(), `msg="group cut"`) }
	waitFor := func(what string, ok func() bool, d time.Duration) {
		t.Helper()
		for deadline := time.Now().Add(d); !ok(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not happen in %v\nleader:\n%s\nfollower:\n%s", what, d, leader.Log(), follower.Log())
			}
		}
	}
	waitFor("two group cuts", func() bool { return countCuts() >= 2 }, 3*time.Minute)
	waitFor("the follower's epochs", func() bool {
		var st struct{ Epochs int }
		b, err := os.ReadFile(p.path("state-b/guest-b/status.json"))
		return err == nil && json.Unmarshal(b, &st) == nil && st.Epochs >= 1
	}, time.Minute)
	t.Logf("%d group cuts so far", countCuts())

	t.Logf("SIGSTOP the following sender")
	follower.Signal(syscall.SIGSTOP)
	stopped := time.Now()
	aborts := strings.Count(leader.Log(), "group cut aborted")
	waitFor("an aborted group cut", func() bool { return strings.Count(leader.Log(), "group cut aborted") > aborts }, time.Minute)
	t.Logf("the leader aborted a cut %v after the SIGSTOP", time.Since(stopped).Round(time.Millisecond))
	c := len(vms["guest-a"].Ticks())
	if _, err := vms["guest-a"].WaitTicks(c+5, 30*time.Second); err != nil {
		t.Errorf("guest-a does not run while the follower is stopped: %v", err)
	}
	cuts := countCuts()
	t.Logf("SIGCONT the following sender")
	follower.Signal(syscall.SIGCONT)
	waitFor("a group cut after SIGCONT", func() bool { return countCuts() > cuts }, 2*time.Minute)
	t.Logf("group cut after the follower came back; %d in all", countCuts())
	c = len(vms["guest-b"].Ticks())
	if _, err := vms["guest-b"].WaitTicks(c+5, 30*time.Second); err != nil {
		t.Errorf("guest-b does not run: %v", err)
	}
	leader.Signal(syscall.SIGTERM)
	follower.Signal(syscall.SIGTERM)
	leader.Wait(30 * time.Second)
	follower.Wait(30 * time.Second)
	for _, n := range []string{"guest-a", "guest-b"} {
		recs := p.checkReplicaRecords(n)
		t.Logf("%s replica verified, records %d..%d", n, recs.First, recs.Last)
	}
}
