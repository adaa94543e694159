package e2e

import (
	"encoding/json"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/udprelay"
)

// senderStatus reads the sender's status file of vm.
func (p *pair) senderStatus(vm string) map[string]any {
	p.t.Helper()
	b, err := os.ReadFile(filepath.Join(p.dir, "state", vm, "status.json"))
	if err != nil {
		p.t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		p.t.Fatal(err)
	}
	return m
}

// lastResult digs the last epoch's result out of the status file.
func lastResult(t *testing.T, st map[string]any) (data, resent float64) {
	t.Helper()
	r, ok := st["last_result"].(map[string]any)
	if !ok {
		t.Fatalf("status has no last_result: %v", st)
	}
	return r["data_bytes"].(float64), r["resent_bytes"].(float64)
}

// replicaHash hashes a replica's disk and RAM images ("" if nothing is
// committed yet).
func (p *pair) replicaHash(vm string, disk, ram int64) string {
	if _, err := os.Stat(filepath.Join(p.replicas, vm, "MANIFEST")); err != nil {
		return ""
	}
	return testkit.FileHash(p.t, p.replicaFile(vm, "disk", "vda"), disk) + testkit.FileHash(p.t, p.replicaFile(vm, "ram", "ram0"), ram)
}

// TestReceiverKilledAtRandomPoints SIGKILLs the receiver at random moments
// of 22 epochs. Each time, with the sender frozen, the restarted receiver's
// replica must pass verify and equal exactly the previous or the new
// epoch's source; then the sender resumes and the epoch completes.
func TestReceiverKilledAtRandomPoints(t *testing.T) {
	needQemu(t)
	const disk, ram = 256 << 20, 64 << 20
	vm := vmSpec{name: "web-1", disks: []diskSpec{{name: "vda", path: "images/vda.raw", format: "raw"}}, ram: []string{"images/pc.ram"}}
	p := newPair(t, []vmSpec{vm})
	rng := rand.New(rand.NewPCG(3, 4))
	testkit.SparseFile(t, p.path("images/vda.raw"), disk)
	testkit.SparseFile(t, p.path("images/pc.ram"), ram)
	p.startReceiver()
	srcHash := func() string {
		return testkit.FileHash(t, p.path("images/vda.raw"), disk) + testkit.FileHash(t, p.path("images/pc.ram"), ram)
	}
	prev := ""
	var dataTotal, resentTotal float64
	kills := 0
	for round := 1; round <= 22; round++ {
		testkit.ScribbleFile(t, rng, p.path("images/vda.raw"), disk, 60, 1<<20)
		testkit.ScribbleFile(t, rng, p.path("images/pc.ram"), ram, 400, 32<<10)
		cur := srcHash()
		snd := testkit.Start(t, p.path("sender.log"), "send", "--once", "--retries", "30", "--config", p.sendCfg)
		time.Sleep(time.Duration(20+rng.IntN(700)) * time.Millisecond)
		snd.Signal(syscall.SIGSTOP)
		p.rcv.Kill()
		kills++
		p.startReceiver()
		p.verify("web-1")
		if h := p.replicaHash("web-1", disk, ram); h != prev && h != cur {
			t.Fatalf("round %d: after SIGKILL the replica is neither the previous nor the new epoch", round)
		}
		snd.Signal(syscall.SIGCONT)
		if code, err := snd.Wait(2 * time.Minute); code != 0 || err != nil {
			t.Fatalf("round %d: sender exit %d %v\n%s\nreceiver:\n%s", round, code, err, snd.Log(), p.rcv.Log())
		}
		if h := p.replicaHash("web-1", disk, ram); h != cur {
			t.Fatalf("round %d: replica differs from the source after the epoch completed", round)
		}
		p.verify("web-1")
		data, resent := lastResult(t, p.senderStatus("web-1"))
		dataTotal += data
		resentTotal += resent
		prev = cur
	}
	t.Logf("%d receiver kills: re-sent %.1f MiB of %.1f MiB changed (%.1f%% of the epochs' data)", kills, resentTotal/(1<<20), dataTotal/(1<<20), 100*resentTotal/dataTotal)
	if resentTotal > dataTotal/2 {
		t.Errorf("re-sent %.0f of %.0f bytes: transfers restarted instead of resuming", resentTotal, dataTotal)
	}
}

// TestLinkCutMidEpoch cuts the path between sender and receiver (a UDP
// relay drops everything) in the middle of an epoch, for longer than the
// QUIC idle timeout so the connection dies; the sender reconnects and
// resumes from the receiver's durable progress instead of starting over.
func TestLinkCutMidEpoch(t *testing.T) {
	needQemu(t)
	const disk = 512 << 20
	vm := vmSpec{name: "web-1", disks: []diskSpec{{name: "vda", path: "images/vda.raw", format: "raw"}}, ram: []string{"images/pc.ram"}}
	p := newPair(t, []vmSpec{vm})
	rng := rand.New(rand.NewPCG(5, 6))
	testkit.SparseFile(t, p.path("images/vda.raw"), disk)
	testkit.SparseFile(t, p.path("images/pc.ram"), 16<<20)
	testkit.ScribbleFile(t, rng, p.path("images/vda.raw"), disk, 200, 1<<20)
	p.startReceiver()
	relay, err := udprelay.New("127.0.0.1:0", p.receiverAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	relay.SetRate(20 << 20) // slow enough that the cut lands mid-epoch
	cfg := p.senderConfig("sender-relay.toml", "site-a", relay.Addr().(*net.UDPAddr).Port, []vmSpec{vm}, `idle_timeout = "2s"`)
	snd := testkit.Start(t, p.path("sender.log"), "send", "--once", "--config", cfg)
	time.Sleep(1500 * time.Millisecond)
	relay.SetDown(true)
	time.Sleep(4 * time.Second)
	relay.SetDown(false)
	if code, err := snd.Wait(3 * time.Minute); code != 0 || err != nil {
		t.Fatalf("sender exit %d %v\n%s", code, err, snd.Log())
	}
	qemuCompare(t, p.path("images/vda.raw"), "raw", p.replicaFile("web-1", "disk", "vda"))
	p.verify("web-1")
	st := p.senderStatus("web-1")
	data, resent := lastResult(t, st)
	r := st["last_result"].(map[string]any)
	t.Logf("link cut: %v attempts, resumed at item %v, re-sent %.1f MiB of %.1f MiB", r["attempts"], r["start_seq"], resent/(1<<20), data/(1<<20))
	if r["attempts"].(float64) < 2 || r["start_seq"].(float64) == 0 {
		t.Fatalf("the cut did not force a reconnect and resume: %v", r)
	}
	if resent > data/4 {
		t.Fatalf("re-sent %.0f of %.0f bytes after the cut", resent, data)
	}
}

func (p *pair) receiverAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// TestUnknownKeyRefused: a sender whose certificate the receiver does not
// pin is refused during the handshake with a message naming its
// fingerprint, and nothing is written.
func TestUnknownKeyRefused(t *testing.T) {
	vm := vmSpec{name: "web-1", disks: []diskSpec{{name: "vda", path: "images/vda.raw", format: "raw"}}}
	p := newPair(t, []vmSpec{vm})
	testkit.SparseFile(t, p.path("images/vda.raw"), 1<<20)
	testkit.MustRun(t, "keygen", "--out", p.path("keys"), "--name", "mallory")
	cfg := p.senderConfig("sender-mallory.toml", "mallory", p.port, []vmSpec{vm}, "")
	p.startReceiver()
	code, out := testkit.Run(t, "send", "--once", "--retries", "0", "--config", cfg)
	if code != 4 {
		t.Fatalf("unknown key: exit %d, want 4\n%s", code, out)
	}
	if fp := fingerprint(t, p.path("keys/mallory")); !strings.Contains(out, fp) {
		t.Errorf("refusal does not name the presented fingerprint %s:\n%s", fp, out)
	}
	if _, err := os.Stat(filepath.Join(p.replicas, "web-1")); err == nil {
		t.Fatal("a refused sender created a replica directory")
	}
	t.Logf("refusal: %s", lastLine(out))
}

// TestSenderLimitedToItsVMs: a sender authorized for VM a cannot write VM b.
func TestSenderLimitedToItsVMs(t *testing.T) {
	a := vmSpec{name: "a", disks: []diskSpec{{name: "vda", path: "images/a.raw", format: "raw"}}}
	b := vmSpec{name: "b", disks: []diskSpec{{name: "vda", path: "images/b.raw", format: "raw"}}}
	p := newPair(t, []vmSpec{a})
	testkit.SparseFile(t, p.path("images/a.raw"), 1<<20)
	testkit.SparseFile(t, p.path("images/b.raw"), 1<<20)
	p.startReceiver()
	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	cfg := p.senderConfig("sender-b.toml", "site-a", p.port, []vmSpec{b}, "")
	code, out := testkit.Run(t, "send", "--once", "--retries", "0", "--config", cfg)
	if code != 4 || !strings.Contains(out, "not authorized") {
		t.Fatalf("write to VM b: exit %d, want 4 and 'not authorized'\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(p.replicas, "b")); err == nil {
		t.Fatal("an unauthorized sender created a replica directory")
	}
	if m := p.manifest("a"); m.Epoch != 1 {
		t.Fatalf("VM a at epoch %d", m.Epoch)
	}
}

// TestSenderKilledMidEpoch SIGKILLs the sender while it streams an epoch;
// a new sender process resumes the staged epoch from the receiver's
// durable progress (the plan is the same, since the images did not
// change) and the replica ends equal to the source.
func TestSenderKilledMidEpoch(t *testing.T) {
	needQemu(t)
	const disk = 512 << 20
	vm := vmSpec{name: "web-1", disks: []diskSpec{{name: "vda", path: "images/vda.raw", format: "raw"}}, ram: []string{"images/pc.ram"}}
	p := newPair(t, []vmSpec{vm})
	rng := rand.New(rand.NewPCG(7, 8))
	testkit.SparseFile(t, p.path("images/vda.raw"), disk)
	testkit.SparseFile(t, p.path("images/pc.ram"), 32<<20)
	p.startReceiver()
	resumed := 0
	for round := 1; round <= 4; round++ {
		testkit.ScribbleFile(t, rng, p.path("images/vda.raw"), disk, 120, 1<<20)
		testkit.ScribbleFile(t, rng, p.path("images/pc.ram"), 32<<20, 200, 32<<10)
		snd := testkit.Start(t, p.path("sender.log"), "send", "--once", "--config", p.sendCfg)
		if !snd.WaitLog("msg=epoch ", 30*time.Second) {
			t.Fatalf("sender did not start an epoch:\n%s", snd.Log())
		}
		// Killed once the receiver has journaled two acknowledgement
		// intervals (ack_every is 4 MiB), so that some of the epoch is
		// durable whatever the load on the machine, then a little later.
		journal := filepath.Join(p.replicas, "web-1", "journal")
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if st, err := os.Stat(journal); err == nil && st.Size() >= 8<<20 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the receiver journaled less than 8 MiB in 30 s:\n%s", round, snd.Log())
			}
		}
		time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond)
		snd.Kill()
		out := testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
		if testing.Verbose() {
			t.Logf("restarted sender:\n%s", out)
		}
		qemuCompare(t, p.path("images/vda.raw"), "raw", p.replicaFile("web-1", "disk", "vda"))
		if a, b := testkit.FileHash(t, p.path("images/pc.ram"), -1), testkit.FileHash(t, p.replicaFile("web-1", "ram", "ram0"), -1); a != b {
			t.Fatalf("round %d: RAM differs", round)
		}
		p.verify("web-1")
		r := p.senderStatus("web-1")["last_result"].(map[string]any)
		if r["start_seq"].(float64) > 0 {
			resumed++
		}
		t.Logf("round %d: restarted sender: base %v, resumed at item %v of %v", round, r["base"], r["start_seq"], r["items"])
	}
	if resumed == 0 {
		t.Error("no restarted sender resumed a staged epoch; every kill restarted from scratch")
	}
}
