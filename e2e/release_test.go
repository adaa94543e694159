package e2e

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/udprelay"
	"github.com/drsync/drsync/vfs"
)

// TestFailoverAfterSenderDiesMidEpoch: the protected site dies (guest and
// sender SIGKILLed) while an epoch is partly received. The receiver, whose
// connection stays open until the QUIC idle timeout (15 s), is only waiting
// for a dead sender, so the failover takes (and fences) the replica within
// 2 s of the death and resumes the guest from the previous committed epoch;
// the staged part of the interrupted epoch is never applied.
func TestFailoverAfterSenderDiesMidEpoch(t *testing.T) {
	vm, _ := liveGuest(t, 256, nil)
	p := livePair(t, vm, "")
	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	committed := p.manifest("guest-1")
	// The next epoch crosses a slow link, so it is still arriving when
	// the site dies.
	relay, err := udprelay.New("127.0.0.1:0", p.receiverAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	relay.SetRate(512 << 10)
	spec := vmSpec{name: "guest-1", qmp: vm.QMPSocket, disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}}
	slow := p.senderConfig("sender-slow.toml", "site-a", relay.Addr().(*net.UDPAddr).Port, []vmSpec{spec}, "")
	time.Sleep(time.Second) // the guest dirties memory for the next epoch
	snd := testkit.Start(t, p.path("sender.log"), "send", "--once", "--config", slow)
	journal := filepath.Join(p.replicas, "guest-1", "journal")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if st, err := os.Stat(journal); err == nil && st.Size() >= 256<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver staged nothing of epoch %d:\n%s", committed.Epoch+1, snd.Log())
		}
	}
	snd.Kill()
	vm.Kill()
	died := time.Now()
	if m := p.manifest("guest-1"); m.Epoch != committed.Epoch {
		t.Fatalf("epoch %d committed before the site died; the link is too fast for this test", m.Epoch)
	}

	serial := p.path("dr-serial.log")
	rbPath := p.runbookFile("runbook.toml", p.recvCfg, serial, "")
	t.Cleanup(func() { killDRVMs(p) })
	code, out := testkit.Run(t, "failover", "--runbook", rbPath)
	took := time.Since(died)
	if code != 0 {
		t.Fatalf("failover after the sender died mid-epoch: exit %d\n%s\nreceiver:\n%s", code, out, p.rcv.Log())
	}
	// The takeover marks the replica as soon as it holds it; the rest of
	// the failover (QEMU's start, the checks) does not depend on the
	// receiver.
	mark, err := replica.TakenOver(vfs.Default, filepath.Join(p.replicas, "guest-1"))
	if err != nil || mark == nil {
		t.Fatalf("no takeover mark after the failover: %v", err)
	}
	fenced := mark.At.Sub(died)
	t.Logf("replica fenced %v and failover complete %v after the site died:\n%s", fenced.Round(time.Millisecond), took.Round(time.Millisecond), out)
	if fenced > 2*time.Second {
		t.Errorf("the failover took the replica %v after the site died, want within 2s", fenced)
	}
	if mark.Epoch != committed.Epoch {
		t.Errorf("the replica was taken over at epoch %d, want %d", mark.Epoch, committed.Epoch)
	}
	if !strings.Contains(out, fmt.Sprintf("from epoch %d ", committed.Epoch)) {
		t.Errorf("failover did not resume epoch %d:\n%s", committed.Epoch, out)
	}
	var ticks []guest.Tick
	for deadline := time.Now().Add(30 * time.Second); len(ticks) < 5 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ticks = guest.ParseTicks(mustRead(t, serial))
	}
	if len(ticks) < 5 {
		t.Fatalf("the DR guest does not run:\n%s", mustRead(t, serial))
	}
	if m := p.manifest("guest-1"); m.Epoch != committed.Epoch || m.StateID != committed.StateID {
		t.Fatalf("replica at epoch %d after the failover, want %d unchanged", m.Epoch, committed.Epoch)
	}
	p.checkReplicaRecords("guest-1")

	// The receiver's connection to the dead sender is still open; a new
	// sender is refused: the replica runs as the VM now.
	code, out = testkit.Run(t, "send", "--once", "--retries", "0", "--config", p.sendCfg)
	if code != 4 || !strings.Contains(out, "taken over") {
		t.Errorf("sender into the taken-over replica: exit %d\n%s", code, out)
	}
}

// TestRestartedReceiverResetsSender SIGKILLs the receiver at 20 random
// moments of epochs of image files and restarts it at once; half the kills
// land while the sender waits for the commit acknowledgement, having sent
// everything, and every other epoch is striped over four connections.
// Each time the restarted receiver resets the sender's old connections at
// once (it has the same stateless-reset key), so the sender reconnects,
// resumes and commits within 5 s of the restart instead of waiting out
// the 15 s idle timeout.
func TestRestartedReceiverResetsSender(t *testing.T) {
	needQemu(t)
	const disk, ram = 128 << 20, 32 << 20
	vm := vmSpec{name: "web-1", disks: []diskSpec{{name: "vda", path: "images/vda.raw", format: "raw"}}, ram: []string{"images/pc.ram"}}
	p := newPair(t, []vmSpec{vm})
	striped := p.senderConfig("sender-striped.toml", "site-a", p.port, []vmSpec{vm}, "connections = 4")
	rng := rand.New(rand.NewPCG(11, 12))
	testkit.SparseFile(t, p.path("images/vda.raw"), disk)
	testkit.SparseFile(t, p.path("images/pc.ram"), ram)
	p.startReceiver()
	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	srcHash := func() string {
		return testkit.FileHash(t, p.path("images/vda.raw"), disk) + testkit.FileHash(t, p.path("images/pc.ram"), ram)
	}
	var slowest time.Duration
	interrupted := map[bool]int{} // by whether the kill aimed at the acknowledgement wait
	for round := 1; round <= 20; round++ {
		testkit.ScribbleFile(t, rng, p.path("images/vda.raw"), disk, 40, 1<<20)
		testkit.ScribbleFile(t, rng, p.path("images/pc.ram"), ram, 200, 32<<10)
		cur := srcHash()
		cfg := p.sendCfg
		if round%2 == 0 {
			cfg = striped
		}
		snd := testkit.Start(t, p.path(fmt.Sprintf("sender-%d.log", round)), "send", "--once", "--retries", "30", "--log-level", "debug", "--config", cfg)
		ackWait := round%4 < 2
		if ackWait {
			if !snd.WaitLog("commit sent", time.Minute) {
				t.Fatalf("round %d: the sender sent no commit:\n%s", round, snd.Log())
			}
			time.Sleep(time.Duration(rng.IntN(100)) * time.Millisecond)
		} else {
			if !snd.WaitLog("msg=epoch ", time.Minute) {
				t.Fatalf("round %d: the sender started no epoch:\n%s", round, snd.Log())
			}
			time.Sleep(time.Duration(rng.IntN(600)) * time.Millisecond)
		}
		p.rcv.Kill()
		p.startReceiver()
		restarted := time.Now()
		code, err := snd.Wait(time.Minute)
		took := time.Since(restarted)
		if code != 0 || err != nil {
			t.Fatalf("round %d: sender exit %d %v\n%s\nreceiver:\n%s", round, code, err, snd.Log(), p.rcv.Log())
		}
		if strings.Contains(snd.Log(), "epoch failed; retrying") {
			interrupted[ackWait]++
			slowest = max(slowest, took)
			if took > 5*time.Second {
				t.Errorf("round %d: the sender committed %v after the receiver restarted, want within 5s:\n%s", round, took.Round(time.Millisecond), snd.Log())
			}
		}
		if h := srcHash(); h != cur || p.replicaHash("web-1", disk, ram) != cur {
			t.Fatalf("round %d: replica differs from the source after the epoch completed", round)
		}
	}
	p.verify("web-1")
	t.Logf("20 receiver kills: %d interrupted the wait for the commit acknowledgement, %d other moments of the epoch; the slowest sender committed %v after the restart",
		interrupted[true], interrupted[false], slowest.Round(time.Millisecond))
	if interrupted[true] < 3 {
		t.Errorf("only %d kills interrupted the acknowledgement wait", interrupted[true])
	}
}
