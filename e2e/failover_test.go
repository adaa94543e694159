package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
)

// runbookFile writes a failover runbook for the live test guest.
func (p *pair) runbookFile(name, recvCfg, serial, extra string) string {
	p.t.Helper()
	kernel, initrd := guest.Build(p.t)
	return p.write(name, fmt.Sprintf(`
name = "site-b"
receiver_config = %q
work_dir = "failover"
%s
[[hook]]
name = "fence site-a"
when = "before"
run = ["touch", %q]

[[hook]]
name = "switch dns"
when = "after"
run = ["touch", %q]

[[group]]
name = "apps"
vms = ["guest-1"]

[[vm]]
name = "guest-1"
accel = "tcg"
args = ["-display", "none", "-no-reboot", "-nodefaults", "-serial", "file:%s",
        "-kernel", %q, "-initrd", %q, "-append", "console=ttyS0 panic=-1 quiet no_timer_check",
        "-device", "virtio-blk-pci,drive=disk0,id=vblk0", "-device", "virtio-blk-pci,drive=disk1,id=vblk1"]
  [[vm.disk]]
  replica = "vda"
  node = "disk0"
  [[vm.disk]]
  replica = "vdb"
  node = "disk1"
  [[vm.check]]
  kind = "running"
  timeout = "10s"
  [[vm.check]]
  kind = "serial"
  file = %q
  match = "^TICK "
  timeout = "30s"
`, recvCfg, extra, p.path("fenced"), p.path("dns-switched"), serial, kernel, initrd, serial))
}

// TestFailoverRunbook replicates the running guest, loses the protected
// site (its QEMU is killed), and runs the failover runbook: bad runbooks are
// refused before anything starts, the dry run starts nothing, and the real
// run resumes the guest from the last committed epoch with its memory: its
// counter continues from that epoch, not from boot, and its disk records are
// whole. The taken-over replica then refuses its sender, and running the
// runbook again finds the VM already up.
func TestFailoverRunbook(t *testing.T) {
	vm, _ := liveGuest(t, 256, nil)
	p := livePair(t, vm, "")
	for range 3 {
		testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
		time.Sleep(500 * time.Millisecond)
	}
	recs := p.checkReplicaRecords("guest-1")
	m := p.manifest("guest-1")
	time.Sleep(2 * time.Second) // the guest runs on past the last epoch...
	var before, after guest.Tick
	for _, tk := range vm.Ticks() {
		if tk.At.Before(m.Cut) {
			before = tk
		} else if after.At.IsZero() {
			after = tk
		}
	}
	killed := vm.Ticks()[len(vm.Ticks())-1]
	vm.Kill() // ...until the protected site is lost.

	serial := p.path("dr-serial.log")
	rbPath := p.runbookFile("runbook.toml", p.recvCfg, serial, "")
	t.Cleanup(func() { killDRVMs(p) })

	// Refused before anything starts.
	bad := func(name, from, to string, wantCode int, want string) {
		t.Helper()
		b, _ := os.ReadFile(rbPath)
		path := p.write(name, strings.Replace(string(b), from, to, 1))
		code, out := testkit.Run(t, "failover", "--runbook", path)
		if code != wantCode || !strings.Contains(out, want) {
			t.Errorf("%s: exit %d, want %d with %q:\n%s", name, code, wantCode, want, out)
		}
	}
	bad("unknown-vm.toml", `vms = ["guest-1"]`, `vms = ["guest-1", "cache-9"]`, 2, `names vm "cache-9"`)
	bad("unknown-check.toml", `kind = "running"`, `kind = "ping"`, 2, `unknown kind "ping"`)
	bad("unknown-key.toml", `timeout = "10s"`, `timeout = "10s"`+"\nretries = 3", 2, "unknown key")
	b, _ := os.ReadFile(p.recvCfg)
	p.write("receiver-ghost.toml", strings.Replace(string(b), `vms = ["guest-1"]`, `vms = ["guest-1", "ghost-1"]`, 1))
	text := string(mustRead(t, rbPath))
	ghost := strings.Replace(text, p.recvCfg, p.path("receiver-ghost.toml"), 1)
	ghost = strings.Replace(ghost, `vms = ["guest-1"]`, `vms = ["guest-1", "ghost-1"]`, 1)
	ghost += "\n" + strings.Replace(text[strings.Index(text, "[[vm]]"):], `name = "guest-1"`, `name = "ghost-1"`, 1)
	ghostPath := p.write("ghost.toml", ghost)
	code, out := testkit.Run(t, "failover", "--runbook", ghostPath)
	if code != 1 || !strings.Contains(out, "vm ghost-1: no replica at") {
		t.Errorf("missing replica: exit %d\n%s", code, out)
	}
	p.write("receiver-nobody.toml", strings.Replace(string(b), `vms = ["guest-1"]`, `vms = ["other-1"]`, 1))
	bad("unauthorized.toml", p.recvCfg, p.path("receiver-nobody.toml"), 2, `vm "guest-1": this site holds no replica`)
	// An epoch being applied holds the replica's lock (for longer than the
	// failover waits, here), and says so.
	lock, err := os.OpenFile(filepath.Join(p.replicas, "guest-1", "LOCK"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Flock(int(lock.Fd()), syscall.LOCK_EX)
	lock.WriteAt([]byte("the receiver (pid 1) is committing and applying epoch 9\n"), 0)
	code, out = testkit.Run(t, "failover", "--runbook", rbPath)
	lock.Close()
	if code != 1 || !strings.Contains(out, "still in use") || !strings.Contains(out, "applying epoch 9") {
		t.Errorf("replica mid-apply: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(p.path("fenced")); err == nil {
		t.Fatal("a refused runbook ran a hook")
	}

	out = testkit.MustRun(t, "failover", "--runbook", rbPath, "--dry-run")
	if !strings.Contains(out, "start:guest-1") || !strings.Contains(out, fmt.Sprintf("from epoch %d", m.Epoch)) {
		t.Errorf("dry run plan:\n%s", out)
	}
	if _, err := os.Stat(serial); err == nil {
		t.Fatal("the dry run started a VM")
	}
	if _, err := os.Stat(p.path("fenced")); err == nil {
		t.Fatal("the dry run ran a hook")
	}

	t0 := time.Now()
	out = testkit.MustRun(t, "failover", "--runbook", rbPath)
	t.Logf("failover (%v):\n%s", time.Since(t0).Round(time.Millisecond), out)
	for _, f := range []string{"fenced", "dns-switched"} {
		if _, err := os.Stat(p.path(f)); err != nil {
			t.Errorf("hook did not run: %v", err)
		}
	}
	var ticks []guest.Tick
	for deadline := time.Now().Add(30 * time.Second); len(ticks) < 10 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ticks = guest.ParseTicks(mustRead(t, serial))
	}
	log := string(mustRead(t, serial))
	if len(ticks) < 10 || strings.Contains(log, "START") || strings.Contains(log, "RESUME") {
		t.Fatalf("the DR guest did not continue (%d ticks):\n%s", len(ticks), log)
	}
	t.Logf("protected guest: counter %d before epoch %d's cut, %d after it, %d when the site died; DR guest continues at counter %d, record %d (replica held records %d..%d)",
		before.Counter, m.Epoch, after.Counter, killed.Counter, ticks[0].Counter, ticks[0].Seq, recs.First, recs.Last)
	if ticks[0].Counter < before.Counter || ticks[0].Counter > after.Counter+20 {
		t.Errorf("DR counter %d does not continue from the cut (%d..%d)", ticks[0].Counter, before.Counter, after.Counter)
	}
	if ticks[0].Seq+5 < recs.Last || ticks[0].Seq > recs.Last+5 {
		t.Errorf("DR guest's last record %d, the replica's %d", ticks[0].Seq, recs.Last)
	}
	if last := ticks[len(ticks)-1]; last.Seq <= ticks[0].Seq {
		t.Errorf("the DR guest writes no records: %v", ticks)
	}

	// The sender is refused: the replica runs as the VM now.
	code, out = testkit.Run(t, "send", "--once", "--retries", "0", "--config", p.sendCfg)
	if code != 4 || !strings.Contains(out, "taken over") {
		t.Errorf("sender into a taken-over replica: exit %d\n%s", code, out)
	}
	p.verify("guest-1")

	// Running the runbook again: everything is done, the VM still runs.
	out = testkit.MustRun(t, "failover", "--runbook", rbPath)
	if !strings.Contains(out, "still running from an earlier run") || strings.Count(string(mustRead(t, p.path("failover/run.log"))), `"step":"start:guest-1"`) != 1 {
		t.Errorf("second run:\n%s", out)
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return b
}

// killDRVMs stops the QEMUs the runbook started (they outlive drsync).
func killDRVMs(p *pair) { killVMsOf(p.path("failover/run.log")) }

// killVMsOf stops the QEMUs a run log records.
func killVMsOf(runLog string) {
	b, _ := os.ReadFile(runLog)
	for _, line := range strings.Split(string(b), "\n") {
		var r struct{ PID int }
		if json.Unmarshal([]byte(line), &r) == nil && r.PID > 0 {
			syscall.Kill(r.PID, syscall.SIGKILL)
		}
	}
}

// replicaDigests hashes every file of a replica but its lock.
func replicaDigests(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		// DRILL.json is a drill's outcome, not replica data.
		if e.Name() != "LOCK" && e.Name() != "DRILL.json" && e.Type().IsRegular() {
			out[e.Name()] = testkit.FileHash(t, filepath.Join(dir, e.Name()), -1)
		}
	}
	return out
}

// TestFailoverDrill: a drill starts an isolated copy of the VM from its
// replica, checks it and tears it down; the replica is byte-identical
// afterwards and is never marked taken over; and replication goes on while
// a drill runs.
func TestFailoverDrill(t *testing.T) {
	vm, _ := liveGuest(t, 256, nil)
	p := livePair(t, vm, `min_interval = "1s"`)
	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	serial := p.path("drill-serial.log")
	rbPath := p.runbookFile("runbook.toml", p.recvCfg, serial, "")
	repl := filepath.Join(p.replicas, "guest-1")

	before := replicaDigests(t, repl)
	out := testkit.MustRun(t, "failover", "--runbook", rbPath, "--drill")
	t.Logf("drill:\n%s", out)
	if !strings.Contains(out, "complete") || !strings.Contains(out, "stopped and its copy removed") || len(guest.ParseTicks(mustRead(t, serial))) == 0 {
		t.Fatalf("drill did not run the VM:\n%s", out)
	}
	if after := replicaDigests(t, repl); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("the drill changed the replica:\nbefore %v\nafter  %v", before, after)
	}
	for _, f := range []string{p.path("fenced"), p.path("dns-switched"), filepath.Join(repl, "TAKENOVER"), p.path("failover/_drill/guest-1")} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s exists after a drill", f)
		}
	}
	p.verify("guest-1")
	// The outcome is recorded for the receiver's metrics.
	var drill struct {
		OK          bool      `json:"ok"`
		Epoch       uint64    `json:"epoch"`
		LastSuccess time.Time `json:"last_success"`
	}
	if err := json.Unmarshal([]byte(mustRead(t, filepath.Join(repl, "DRILL.json"))), &drill); err != nil || !drill.OK || drill.Epoch == 0 || drill.LastSuccess.IsZero() {
		t.Errorf("drill result: %+v, %v", drill, err)
	}

	// Replication goes on during a drill.
	snd := testkit.Start(t, p.path("sender.log"), "send", "--config", p.sendCfg)
	for e0 := p.manifest("guest-1").Epoch; p.manifest("guest-1").Epoch < e0+2; time.Sleep(100 * time.Millisecond) {
	}
	os.Remove(serial)
	start := time.Now()
	testkit.MustRun(t, "failover", "--runbook", rbPath, "--drill", "--hold", "5s")
	end := time.Now()
	var during []uint64
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if m := p.manifest("guest-1"); m.Cut.After(end) {
			break
		}
	}
	snd.Signal(syscall.SIGTERM)
	snd.Wait(30 * time.Second)
	for _, line := range strings.Split(snd.Log(), "\n") {
		if !strings.Contains(line, `msg="epoch committed"`) {
			continue
		}
		m := regexp.MustCompile(`epoch=(\d+) cut=(\S+)`).FindStringSubmatch(line)
		if m == nil {
			continue
		}
		cut, _ := time.Parse(time.RFC3339Nano, m[2])
		if cut.After(start) && cut.Before(end) {
			e, _ := strconv.ParseUint(m[1], 10, 64)
			during = append(during, e)
		}
	}
	t.Logf("epochs cut during the %v drill: %v", end.Sub(start).Round(time.Millisecond), during)
	if len(during) < 2 {
		t.Errorf("replication stalled during the drill: epochs %v\n%s", during, snd.Log())
	}
	p.verify("guest-1")
}

// TestFailoverOlderPoint: with recovery points kept, a failover can resume
// an older epoch (after corruption was replicated, say): the DR guest's
// counter continues from that epoch's cut, not from the newest, and the
// rebuilt point verifies. Another point is then refused while the VM runs.
func TestFailoverOlderPoint(t *testing.T) {
	vm, _ := liveGuest(t, 256, nil)
	p := livePair(t, vm, "")
	b := string(mustRead(t, p.recvCfg))
	p.write("receiver.toml", strings.Replace(b, "[storage]\ndir = \"replicas\"", "[storage]\ndir = \"replicas\"\nkeep_points = 3", 1))
	p.rcv.Kill()
	p.startReceiver()
	cuts := map[uint64]time.Time{}
	for range 4 {
		testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
		m := p.manifest("guest-1")
		cuts[m.Epoch] = m.Cut
		time.Sleep(time.Second)
	}
	ticks := vm.Ticks()
	vm.Kill()
	around := func(cut time.Time) (before, after uint64) {
		for _, tk := range ticks {
			if tk.At.Before(cut) {
				before = tk.Counter
			} else if after == 0 {
				after = tk.Counter
			}
		}
		return
	}
	serial := p.path("dr-serial.log")
	rbPath := p.runbookFile("runbook.toml", p.recvCfg, serial, "")
	t.Cleanup(func() { killDRVMs(p) })
	out := testkit.MustRun(t, "failover", "--runbook", rbPath, "--epoch", "2", "--dry-run")
	if !strings.Contains(out, "from epoch 2 ") {
		t.Fatalf("dry run of --epoch 2:\n%s", out)
	}
	code, out := testkit.Run(t, "failover", "--runbook", rbPath, "--epoch", "9", "--dry-run")
	if code == 0 || !strings.Contains(out, "keeps no epoch 9") {
		t.Errorf("--epoch 9: exit %d\n%s", code, out)
	}
	out = testkit.MustRun(t, "failover", "--runbook", rbPath, "--epoch", "2")
	t.Logf("failover to epoch 2:\n%s", out)
	var dr []guest.Tick
	for deadline := time.Now().Add(30 * time.Second); len(dr) < 5 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		dr = guest.ParseTicks(mustRead(t, serial))
	}
	if len(dr) == 0 {
		t.Fatalf("no DR ticks:\n%s", mustRead(t, serial))
	}
	lo, hi := around(cuts[2])
	_, newest := around(cuts[4])
	t.Logf("epoch 2 cut between counters %d and %d (epoch 4 at %d); the DR guest continues at %d", lo, hi, newest, dr[0].Counter)
	if dr[0].Counter < lo || dr[0].Counter > hi+20 {
		t.Errorf("the DR guest resumed at counter %d, not at epoch 2 (%d..%d)", dr[0].Counter, lo, hi)
	}
	testkit.MustRun(t, "verify", "--replica", p.path("failover/guest-1/point-2"))
	p.verify("guest-1")

	// Another point must not replace the VM that runs from epoch 2: the run
	// is refused before anything starts, and the VM runs on.
	code, out = testkit.Run(t, "failover", "--runbook", rbPath, "--epoch", "3")
	if code == 0 || !strings.Contains(out, "still runs") || !strings.Contains(out, "from epoch 2, not the epoch 3") {
		t.Errorf("--epoch 3 over a VM running from epoch 2: exit %d\n%s", code, out)
	}
	n := len(guest.ParseTicks(mustRead(t, serial)))
	time.Sleep(time.Second)
	if len(guest.ParseTicks(mustRead(t, serial))) <= n {
		t.Error("the VM running from epoch 2 stopped")
	}
}

// lastTick is the newest TICK of a serial log.
func lastTick(t *testing.T, path string) guest.Tick {
	t.Helper()
	ticks := guest.ParseTicks(mustRead(t, path))
	if len(ticks) == 0 {
		t.Fatalf("no ticks in %s", path)
	}
	return ticks[len(ticks)-1]
}

// TestFailback: after a failover to site B, the protected site A comes
// back. Its old disks are seeded as a replica, the VM running at B is
// replicated back sending only what differs, a final epoch pauses it at B,
// and the runbook at A resumes it there from that epoch, with its memory.
func TestFailback(t *testing.T) {
	vm, dir := liveGuest(t, 256, nil)
	p := livePair(t, vm, "")
	testkit.MustRun(t, "send", "--once", "--config", p.sendCfg)
	vm.Kill() // site A is lost
	drSerial := p.path("dr-serial.log")
	testkit.MustRun(t, "failover", "--runbook", p.runbookFile("runbook.toml", p.recvCfg, drSerial, ""))
	t.Cleanup(func() { killDRVMs(p) })
	time.Sleep(3 * time.Second) // the VM works at site B

	// Site A is back: its receiver starts from A's own old disks.
	portA := freePort(t)
	recvA := p.write("receiver-a.toml", fmt.Sprintf(`
listen = "127.0.0.1:%d"
[identity]
cert = "keys/site-a.crt"
key = "keys/site-a.key"
[storage]
dir = "replicas-a"
[[sender]]
name = "site-b"
fingerprint = %q
vms = ["guest-1"]
`, portA, p.fpB))
	out := testkit.MustRun(t, "seed", "--config", recvA, "--vm", "guest-1", "--disk", "vda="+filepath.Join(dir, "vda.raw"), "--disk", "vdb="+filepath.Join(dir, "vdb.qcow2"))
	t.Log(strings.TrimSpace(out))
	rcvA := testkit.Start(t, p.path("receiver-a.log"), "receive", "--config", recvA)
	if !rcvA.WaitLog("listening", 30*time.Second) {
		t.Fatalf("receiver A:\n%s", rcvA.Log())
	}
	sendB := p.write("sender-b.toml", fmt.Sprintf(`
[identity]
cert = "keys/site-b.crt"
key = "keys/site-b.key"
[receiver]
address = "127.0.0.1:%d"
fingerprints = [%q]
[state]
dir = "state-b"
[[vm]]
name = "guest-1"
qmp = %q
  [[vm.disk]]
  name = "vda"
  node = "disk0"
  [[vm.disk]]
  name = "vdb"
  node = "disk1"
`, portA, p.fpA, p.path("failover/guest-1/qmp.sock")))
	testkit.MustRun(t, "send", "--once", "--config", sendB)
	st := readStatus(t, p.path("state-b/guest-1/status.json"))
	full := int64(64<<20 + 32<<20 + 256<<20)
	ram := st.LastResult.RAMDataPages * 4096
	t.Logf("failback epoch: %d bytes sent as data (%d on the wire) of the VM's %d bytes of disk and RAM (base %s): disks %d bytes of %d, RAM %d (site A kept no RAM)",
		st.LastResult.DataBytes, st.LastResult.WireBytes, full, st.LastResult.Base, st.LastResult.DataBytes-ram, 96<<20, ram)
	if st.LastResult.Base != "replica-tables" || st.LastResult.DataBytes-ram > 16<<20 {
		t.Errorf("the failback epoch did not send only differences: %+v", st.LastResult)
	}

	// Planned switch-back: a final epoch pauses the VM at B...
	time.Sleep(time.Second)
	out = testkit.MustRun(t, "send", "--once", "--final", "--config", sendB)
	if !strings.Contains(out, "stays paused here") {
		t.Errorf("final epoch:\n%s", out)
	}
	paused := lastTick(t, drSerial)
	time.Sleep(time.Second)
	if again := lastTick(t, drSerial); again != paused {
		t.Fatalf("the VM still runs at B after the final epoch: %v then %v", paused, again)
	}
	code, out := testkit.Run(t, "send", "--once", "--retries", "0", "--config", sendB)
	if code != 2 || !strings.Contains(out, "switched back") {
		t.Errorf("a cut after the final one: exit %d\n%s", code, out)
	}
	// ...and the runbook at A resumes it there.
	aSerial := p.path("a-serial.log")
	rbA := p.runbookFile("runbook-a.toml", recvA, aSerial, "")
	rbText := strings.Replace(string(mustRead(t, rbA)), `work_dir = "failover"`, `work_dir = "failback"`, 1)
	rbText = strings.Replace(rbText, p.path("fenced"), p.path("fenced-a"), 1)
	p.write("runbook-a.toml", strings.Replace(rbText, p.path("dns-switched"), p.path("dns-a"), 1))
	out = testkit.MustRun(t, "failover", "--runbook", rbA)
	t.Cleanup(func() { killVMsOf(p.path("failback/run.log")) })
	var ticks []guest.Tick
	for deadline := time.Now().Add(30 * time.Second); len(ticks) < 5 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ticks = guest.ParseTicks(mustRead(t, aSerial))
	}
	if len(ticks) < 5 {
		t.Fatalf("the VM does not run at A:\n%s\n%s", out, mustRead(t, aSerial))
	}
	t.Logf("paused at B at counter %d, record %d; runs at A from counter %d, record %d", paused.Counter, paused.Seq, ticks[0].Counter, ticks[0].Seq)
	if ticks[0].Counter < paused.Counter || ticks[0].Counter > paused.Counter+20 || ticks[0].Seq+5 < paused.Seq {
		t.Errorf("the VM at A does not continue from the final epoch: %v after %v", ticks[0], paused)
	}
}

type senderStatusFile struct {
	LastResult struct {
		Base         string `json:"base"`
		DataBytes    uint64 `json:"data_bytes"`
		WireBytes    uint64 `json:"wire_bytes"`
		RAMDataPages uint64 `json:"ram_pages_data"`
	} `json:"last_result"`
}

func readStatus(t *testing.T, path string) senderStatusFile {
	t.Helper()
	var st senderStatusFile
	if err := json.Unmarshal(mustRead(t, path), &st); err != nil {
		t.Fatal(err)
	}
	return st
}
