package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/vfs"
)

// Guest-a sends numbered messages to guest-b over their own virtual
// network; each message is on a's disk before it leaves, and b writes each
// one it gets to its disk.
const (
	netSender   = "guest-a"
	netReceiver = "guest-b"
	netGroup    = "pair"
)

// TestGroupNetKilledSender: two guests that message each other are
// protected as one consistency group by one drsync send, which is
// SIGKILLed at a random moment, three times (a fresh site each time).
// After each, failing the group over resumes both guests from one group
// cut: on the DR disks every message b recorded is one a had recorded as
// sent, and both DR guests continue from the cut with their memory (their
// counters, and the messages, go on from there).
func TestGroupNetKilledSender(t *testing.T) {
	for run := 1; run <= 3; run++ {
		t.Run(fmt.Sprintf("kill%d", run), func(t *testing.T) { groupNetRun(t, 1) })
	}
}

// TestGroupNetKilledSenders is TestGroupNetKilledSender with each guest
// protected by its own drsync send, as on two hosts (the leader of the
// group's cuts and a follower, own state directories); both are SIGKILLed
// at once, as when the site dies.
func TestGroupNetKilledSenders(t *testing.T) {
	for run := 1; run <= 3; run++ {
		t.Run(fmt.Sprintf("kill%d", run), func(t *testing.T) { groupNetRun(t, 2) })
	}
}

// groupNetRun protects the messaging pair with senders drsync send
// processes (1 or 2), kills them at a random moment after two group cuts,
// fails the group over and checks the DR pair.
func groupNetRun(t *testing.T, senders int) {
	if testing.Short() {
		t.Skip("boots four guests")
	}
	ports := map[string]int{}
	for _, k := range []string{"a", "b", "dr-a", "dr-b"} {
		ports[k] = freePort(t)
	}
	macs := map[string]string{netSender: "52:54:00:77:00:01", netReceiver: "52:54:00:77:00:02"}
	t.Logf("booting %s (receives) and %s (sends), linked by UDP ports %d and %d", netReceiver, netSender, ports["b"], ports["a"])
	vmB, _ := guest.ProtectedWith(t, 256, guest.MessageArgs("recv", "10.77.0.2/24", "", 0),
		guest.NIC(ports["b"], ports["a"], macs[netReceiver])...)
	vmA, _ := guest.ProtectedWith(t, 256, guest.MessageArgs("send", "10.77.0.1/24", "10.77.0.2", 20),
		guest.NIC(ports["a"], ports["b"], macs[netSender])...)
	vms := map[string]*guest.VM{netSender: vmA, netReceiver: vmB}
	if _, err := vmB.WaitFor(2*time.Minute, func(l guest.Line) bool { return tickSeqAtLeast(l.Text, 5) }); err != nil {
		t.Fatalf("%s receives no messages: %v", netReceiver, err)
	}
	t.Logf("messages flow")

	var specs []vmSpec
	for _, n := range []string{netSender, netReceiver} {
		specs = append(specs, vmSpec{name: n, qmp: vms[n].QMPSocket, extra: `min_interval = "1s"`,
			disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}})
	}
	p := newPair(t, specs, fmt.Sprintf("[[group]]\nname = %q\nvms = [%q, %q]\nrpo = \"1m\"", netGroup, netSender, netReceiver))
	p.startReceiver()
	t.Cleanup(func() { killDRVMs(p) })
	var procs []*testkit.Proc
	if senders == 1 {
		procs = append(procs, testkit.Start(t, p.path("sender.log"), "send", "--config", p.sendCfg))
	} else {
		gport := freePort(t)
		group := func(role string) string {
			return fmt.Sprintf("[[group]]\nname = %q\nvms = [%q, %q]\nrpo = \"1m\"\n%s = \"127.0.0.1:%d\"\npeers = [%q]\nstep_timeout = \"1s\"",
				netGroup, netSender, netReceiver, role, gport, p.fpA)
		}
		cfgA := p.senderConfig("sender-a.toml", "site-a", p.port, specs[:1], group("listen"))
		cfgB := p.senderConfig("sender-b.toml", "site-a", p.port, specs[1:], group("leader"))
		p.write("sender-b.toml", strings.Replace(string(mustRead(t, cfgB)), `dir = "state"`, `dir = "state-b"`, 1))
		procs = append(procs, testkit.Start(t, p.path("sender-a.log"), "send", "--config", cfgA),
			testkit.Start(t, p.path("sender-b.log"), "send", "--config", cfgB))
	}
	logs := func() string {
		var b strings.Builder
		for i, pr := range procs {
			fmt.Fprintf(&b, "sender %d:\n%s\n", i+1, pr.Log())
		}
		return b.String()
	}
	// Two group cuts, and each member committed an epoch: a group point
	// can be complete (a cut follows the last before its epochs commit).
	ready := func() bool {
		l := logs()
		return strings.Count(procs[0].Log(), `msg="group cut"`) >= 2 &&
			strings.Contains(l, `msg="epoch committed" vm=`+netSender) && strings.Contains(l, `msg="epoch committed" vm=`+netReceiver)
	}
	for deadline := time.Now().Add(3 * time.Minute); !ready(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no two group cuts in 3m\n%s", logs())
		}
	}
	delay := rand.N(3 * time.Second)
	t.Logf("two group cuts done; SIGKILL the sender(s) in %v", delay.Round(time.Millisecond))
	time.Sleep(delay)
	for _, pr := range procs {
		pr.Kill()
	}
	killed := time.Now()
	t.Logf("sender(s) killed after %d group cuts", strings.Count(procs[0].Log(), `msg="group cut"`))
	ticks := map[string][]guest.Tick{}
	for n, vm := range vms {
		vm.Kill()
		ticks[n] = vm.Ticks()
	}
	t.Logf("protected site lost")

	rb := p.netRunbook(ports, macs)
	out := testkit.MustRun(t, "failover", "--runbook", rb, "--dry-run", "--consistency-group", netGroup)
	m := regexp.MustCompile(`group point of cut (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the dry run names no group point:\n%s", out)
	}
	cut, _ := strconv.ParseUint(m[1], 10, 64)
	t.Logf("dry run: %s", firstLine(out, "group point"))
	code, out := testkit.Run(t, "failover", "--runbook", rb, "--consistency-group", netGroup)
	if code != 0 {
		for n := range vms {
			t.Logf("%s DR console:\n%s", n, mustRead(t, p.path("dr-serial-"+n+".log")))
		}
		t.Fatalf("failover (exit %d):\n%s\n%s", code, out, logs())
	}
	t.Logf("failover done %v after the kill", time.Since(killed).Round(time.Millisecond))

	// The disks the DR guests resumed on: their overlays' backing images.
	sent := p.drRecords(t, netSender, func(r io.ReaderAt, size int64) ([]uint64, error) {
		recs, err := guest.VerifyRecords(r, size)
		if err != nil || recs.Count == 0 {
			return nil, err
		}
		return []uint64{recs.First, recs.Last}, nil
	})
	got := p.drRecords(t, netReceiver, guest.MessageSeqs)
	if len(sent) == 0 || len(got) == 0 {
		t.Fatalf("group cut %d holds no messages: %s recorded %v, %s %d", cut, netSender, sent, netReceiver, len(got))
	}
	lastSent, lastGot := sent[1], got[len(got)-1]
	t.Logf("group cut %d: %s recorded messages %d..%d as sent; %s recorded %d messages, up to %d", cut, netSender, sent[0], lastSent, netReceiver, len(got), lastGot)
	if lastGot > lastSent {
		t.Errorf("%s recorded message %d, which %s had not sent at the cut (it recorded up to %d)", netReceiver, lastGot, netSender, lastSent)
	}

	// Both continue from the cut, with their memory: no boot, and the
	// counter goes on from where it was at the cut.
	for n := range vms {
		serial := p.path("dr-serial-" + n + ".log")
		dr := waitTicks(t, serial, 3)
		if log := string(mustRead(t, serial)); strings.Contains(log, "START") || strings.Contains(log, "RESUME") {
			t.Errorf("%s booted at the DR site instead of resuming its memory:\n%s", n, log)
		}
		at := p.groupCutTime(t, n, cut)
		var lo, hi uint64
		for _, tk := range ticks[n] {
			if tk.At.Before(at) {
				lo = tk.Counter
			} else if hi == 0 {
				hi = tk.Counter
			}
		}
		t.Logf("%s: counter %d..%d around the cut; the DR guest continues at %d (record %d)", n, lo, hi, dr[0].Counter, dr[0].Seq)
		if dr[0].Counter < lo || (hi > 0 && dr[0].Counter > hi+20) {
			t.Errorf("%s resumed at counter %d, not at group cut %d (%d..%d)", n, dr[0].Counter, cut, lo, hi)
		}
	}
	// The messages go on over the DR pair's own link.
	waitSeq(t, p.path("dr-serial-"+netReceiver+".log"), lastGot+10)
	t.Logf("%s receives messages after %d at the DR site", netReceiver, lastGot)
}

// tickSeqAtLeast says whether line is a TICK whose seq is at least n.
func tickSeqAtLeast(line string, n uint64) bool {
	tks := guest.ParseTicks([]byte(line))
	return len(tks) == 1 && tks[0].Seq >= n
}

func firstLine(s, substr string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			return l
		}
	}
	return ""
}

// netRunbook writes a runbook that brings up the messaging pair, linked
// by UDP ports of their own so they never talk to the protected guests.
func (p *pair) netRunbook(ports map[string]int, macs map[string]string) string {
	p.t.Helper()
	kernel, initrd := guest.Build(p.t)
	nics := map[string][]string{
		netSender:   guest.NIC(ports["dr-a"], ports["dr-b"], macs[netSender]),
		netReceiver: guest.NIC(ports["dr-b"], ports["dr-a"], macs[netReceiver]),
	}
	var b strings.Builder
	fmt.Fprintf(&b, "name = \"site-b\"\nreceiver_config = %q\nwork_dir = \"failover\"\n\n[[group]]\nname = \"apps\"\nvms = [%q, %q]\n", p.recvCfg, netReceiver, netSender)
	for _, vm := range []string{netReceiver, netSender} {
		serial := p.path("dr-serial-" + vm + ".log")
		var nic []string
		for _, a := range nics[vm] {
			nic = append(nic, strconv.Quote(a))
		}
		fmt.Fprintf(&b, `
[[vm]]
name = %q
accel = "tcg"
args = ["-display", "none", "-no-reboot", "-nodefaults", "-serial", "file:%s",
        "-kernel", %q, "-initrd", %q, "-append", "console=ttyS0 panic=-1 quiet no_timer_check",
        "-device", "virtio-blk-pci,drive=disk0,id=vblk0", "-device", "virtio-blk-pci,drive=disk1,id=vblk1",
        %s]
  [[vm.disk]]
  replica = "vda"
  node = "disk0"
  [[vm.disk]]
  replica = "vdb"
  node = "disk1"
  [[vm.check]]
  kind = "serial"
  file = %q
  match = "^TICK "
  timeout = "180s"
`, vm, serial, kernel, initrd, strings.Join(nic, ", "), serial)
	}
	return p.write("runbook.toml", b.String())
}

// drRecords reads the record ring of the disk vm's DR guest resumed on:
// the backing image of its vda overlay, as the failover left it.
func (p *pair) drRecords(t *testing.T, vm string, read func(io.ReaderAt, int64) ([]uint64, error)) []uint64 {
	t.Helper()
	overlay := p.path("failover/" + vm + "/disk-disk0.qcow2")
	b, err := exec.Command("qemu-img", "info", "-U", "--output=json", overlay).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v: %s", overlay, err, b)
	}
	var info struct {
		Backing string `json:"full-backing-filename"`
		Format  string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal(b, &info); err != nil || info.Backing == "" {
		t.Fatalf("%s has no backing image (%v): %s", overlay, err, b)
	}
	raw := p.path(vm + "-dr-vda.raw")
	defer os.Remove(raw)
	args := []string{"convert", "-U", "-O", "raw"}
	if info.Format != "" {
		args = append(args, "-f", info.Format)
	}
	if out, err := exec.Command("qemu-img", append(args, info.Backing, raw)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v: %s", info.Backing, err, out)
	}
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	seqs, err := read(f, st.Size())
	if err != nil {
		t.Fatalf("%s's DR disk (%s): %v", vm, filepath.Base(info.Backing), err)
	}
	return seqs
}

// groupCutTime is when vm's epoch of group cut cut was taken.
func (p *pair) groupCutTime(t *testing.T, vm string, cut uint64) time.Time {
	t.Helper()
	pts, err := replica.Points(vfs.Default, filepath.Join(p.replicas, vm))
	if err != nil {
		t.Fatal(err)
	}
	for _, pt := range pts {
		if g := pt.Manifest.Tag(); g != nil && g.Cut == cut {
			return pt.Manifest.Cut
		}
	}
	t.Fatalf("%s keeps no point of group cut %d", vm, cut)
	return time.Time{}
}
