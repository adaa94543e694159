package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/udprelay"
)

// trackedKillMiB is the RAM of the kill tests' guests: small, so each
// restarted sender's first (full) cut is quick under TCG.
const trackedKillMiB = 128

// trackedKillGuest boots the live test guest with its RAM in a shared
// memfd backend, writing fresh pages all the time (every tracked epoch has
// RAM to copy), and a second QMP socket (returned) for the test to watch
// it while drsync holds the first.
func trackedKillGuest(t *testing.T) (*guest.VM, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a guest")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, pidfd_getfd)")
	}
	if err := dirtylog.CheckKernel(); err != nil {
		t.Skipf("this kernel cannot track guest RAM: %v", err)
	}
	mon := filepath.Join(hosttools.ShortTempDir(t, "mon"), "qmp")
	vm, _ := guest.ProtectedWith(t, trackedKillMiB, map[string]string{"dirty_mib": "16", "dirty_rate_kib": "512"},
		"-object", fmt.Sprintf("memory-backend-memfd,id=ram0,size=%dM,share=on", trackedKillMiB), "-machine", "memory-backend=ram0",
		"-qmp", "unix:"+mon+",server=on,wait=off")
	return vm, mon
}

// trackedConfig is a sender configuration for the pair's guest at
// ram_capture = "tracked" and a short min_interval, reaching the receiver
// at port, with a short idle timeout so a dead peer's connection goes
// quickly.
func trackedConfig(p *pair, vm *guest.VM, name string, port int) string {
	spec := vmSpec{name: "guest-1", qmp: vm.QMPSocket, extra: "min_interval = \"200ms\"\nram_capture = \"tracked\"",
		disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}}
	return p.senderConfig(name, "site-a", port, []vmSpec{spec}, `idle_timeout = "2s"`)
}

// slowRelay is a UDP relay to p's receiver carrying rate bytes a second,
// so that epochs take a while on the wire.
func slowRelay(t *testing.T, p *pair, rate int64) (*udprelay.Relay, int) {
	t.Helper()
	relay, err := udprelay.New("127.0.0.1:0", p.receiverAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	relay.SetRate(rate)
	return relay, relay.Addr().(*net.UDPAddr).Port
}

var committedRe = regexp.MustCompile(`msg="epoch committed".*\bepoch=(\d+)\b.*\bram_path=(\w+)`)

// committedEpochs lists the epochs a sender's log says it committed, with
// the RAM path of each.
func committedEpochs(log string) (epochs []uint64, paths []string) {
	for _, m := range committedRe.FindAllStringSubmatch(log, -1) {
		e, _ := strconv.ParseUint(m[1], 10, 64)
		epochs, paths = append(epochs, e), append(paths, m[2])
	}
	return epochs, paths
}

// commitAttr is the value of key on the sender log's commit line of epoch.
func commitAttr(log string, epoch uint64, key string) string {
	re := regexp.MustCompile(`msg="epoch committed".*\bepoch=` + strconv.FormatUint(epoch, 10) + `\b.*\b` + key + `=(\S+)`)
	if m := re.FindStringSubmatch(log); m != nil {
		return m[1]
	}
	return ""
}

// waitTrackedCommit waits up to d for the sender to log the commit of a
// tracked epoch later than after, and returns it.
func waitTrackedCommit(t *testing.T, snd *testkit.Proc, after uint64, d time.Duration) (uint64, bool) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		epochs, paths := committedEpochs(snd.Log())
		for i := range epochs {
			if paths[i] == "tracked" && epochs[i] > after {
				return epochs[i], true
			}
		}
		if code, err := snd.Wait(0); err == nil {
			t.Fatalf("the sender exited (%d) before a tracked epoch after %d:\n%s", code, after, logTail(snd.Log(), 40))
		}
	}
	return 0, false
}

// qemuStatus is QEMU's run state (query-status) over the socket sock.
func qemuStatus(t *testing.T, sock string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := qmp.Dial(ctx, sock, qmp.Options{})
	if err != nil {
		t.Fatalf("QMP %s: %v", sock, err)
	}
	defer s.Close()
	var st struct{ Status string }
	if err := s.Execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatalf("query-status: %v", err)
	}
	return st.Status
}

// waitRunning waits up to d for QEMU to say its guest runs (a sender
// killed in a cut's pause leaves it to the guest guard to resume it).
func waitRunning(t *testing.T, sock string, d time.Duration) string {
	t.Helper()
	st := ""
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if st = qemuStatus(t, sock); st == "running" {
			break
		}
	}
	return st
}

// writeProtection is what the kernel shows of RAM tracking in QEMU
// process pid: whether its guest RAM mapping is registered with a
// userfaultfd (VmFlags "uw"), how many of its pages are write-protected
// (pagemap bit 57), and how many userfaultfds QEMU itself holds.
func writeProtection(t *testing.T, pid int) (registered bool, protected, uffds int) {
	t.Helper()
	mapsText, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	maps, err := dirtylog.ParseMaps(bytes.NewReader(mapsText))
	if err != nil {
		t.Fatal(err)
	}
	regions, err := dirtylog.MemfdRAM(maps, dirtylog.MemfdBackendName, trackedKillMiB<<20)
	if err != nil {
		t.Fatal(err)
	}
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer pagemap.Close()
	const page = 4096
	for _, r := range regions {
		// smaps: a mapping's header line, then its fields, VmFlags last.
		head := fmt.Sprintf("%x-%x ", r.Start, r.End)
		if i := strings.Index(string(smaps), head); i >= 0 {
			rest := string(smaps[i:])
			if j := strings.Index(rest, "VmFlags:"); j >= 0 {
				line, _, _ := strings.Cut(rest[j:], "\n")
				registered = registered || strings.Contains(line+" ", " uw ")
			}
		}
		buf := make([]byte, (r.End-r.Start)/page*8)
		if _, err := pagemap.ReadAt(buf, int64(r.Start/page*8)); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(buf); i += 8 {
			if buf[i+7]&(1<<(57-56)) != 0 {
				protected++
			}
		}
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); strings.Contains(l, "userfaultfd") {
			uffds++
		}
	}
	return registered, protected, uffds
}

// guardRecord is what the guest guard recorded for vm: its runs that
// found a cut in flight (a sender died between the cut's mark, just
// before migrate, and the guest running again), and the guests it resumed
// (the sender died after the cut's migration completed, before its cont).
func (p *pair) guardRecord(vm string) (events int, resumes uint64) {
	var rec agent.GuardRecord
	b, err := os.ReadFile(filepath.Join(p.dir, "state", vm, agent.GuardRecordFile))
	if err != nil {
		return 0, 0
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		p.t.Fatalf("guard record: %v", err)
	}
	return len(rec.Events), rec.Resumes
}

// drsyncProcs lists the processes running the test's drsync binary other
// than receivers (a sender's guest guard outlives it for a moment).
func drsyncProcs(t *testing.T) []string {
	t.Helper()
	bin := testkit.Drsync(t)
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == bin {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
			if len(args) > 1 && args[1] == "receive" {
				continue
			}
			out = append(out, fmt.Sprintf("%d %s", pid, strings.Join(args, " ")))
		}
	}
	return out
}

// stateFiles lists the files under the pair's sender state directory.
func (p *pair) stateFiles() []string {
	p.t.Helper()
	root := filepath.Join(p.dir, "state")
	var out []string
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, path)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// TestTrackedSenderKilled SIGKILLs "drsync send" at ram_capture =
// "tracked" in the middle of tracked epochs, six times: odd rounds when
// QEMU stops the guest for a tracked cut (the kill lands in the cut's
// pause: before its device-state migration completes, QEMU fails the
// migration and resumes the guest itself; after, during the scan and copy
// of written pages or the fleecing, the guest guard resumes it), even
// rounds at a random moment (mostly while the epoch crosses a slow link).
// Each time the guest runs again (QMP says running, its serial ticks go
// on), no write protection or userfaultfd is left in QEMU, the replica
// verifies at a committed epoch that never goes back, and the next sender,
// after a full cut, commits tracked epochs again.
func TestTrackedSenderKilled(t *testing.T) {
	vm, mon := trackedKillGuest(t)
	p := livePair(t, vm, "")
	_, port := slowRelay(t, p, 4<<20)
	cfg := trackedConfig(p, vm, "sender-tracked.toml", port)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	start := time.Now()
	var committed uint64 // the replica's epoch after the last round
	var prevRecs uint64
	inCut, inPause, cleaned, tracked := 0, 0, 0, 0

	// A sender killed while its first (full) cut's RAM is spooled: the
	// spool files are open and already removed, so nothing is left.
	first := testkit.Start(t, p.path("sender-0.log"), "send", "--config", cfg, "--log-level", "debug")
	for deadline := time.Now().Add(2 * time.Minute); !spoolOpen(first.Pid()); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the first sender never held its full cut's RAM spool open:\n%s", logTail(first.Log(), 40))
		}
	}
	first.Kill()
	if st := waitRunning(t, mon, 15*time.Second); st != "running" {
		t.Fatalf("the guest is %q 15 s after a sender was killed while spooling", st)
	}
	if left, _ := filepath.Glob(p.path("state/guest-1/live/*.spool")); len(left) != 0 {
		t.Fatalf("a sender killed while spooling left %v", left)
	}
	t.Logf("round 0: killed while its full cut's RAM was spooled; no spool file left, the guest runs")

	const rounds = 6
	for round := 1; round <= rounds; round++ {
		log := p.path(fmt.Sprintf("sender-%d.log", round))
		snd := testkit.Start(t, log, "send", "--config", cfg, "--log-level", "debug")
		// This sender starts with a full cut (it holds no tracker yet),
		// then tracks: the kill comes once it has committed a tracked
		// epoch after the replica's.
		e, ok := waitTrackedCommit(t, snd, committed, 3*time.Minute)
		if !ok {
			t.Fatalf("round %d: no tracked epoch after %d:\n%s", round, committed, logTail(snd.Log(), 40))
		}
		if round > 1 && strings.Contains(snd.Log(), "removing what an earlier sender left") {
			cleaned++
		}
		reg, prot, uffds := writeProtection(t, vm.Pid)
		if !reg || uffds != 0 {
			t.Fatalf("round %d: while tracked, QEMU's RAM is registered %v (%d pages protected) and QEMU holds %d userfaultfds; want registered, held by drsync only",
				round, reg, prot, uffds)
		}
		events, resumes := p.guardRecord("guest-1")
		where := "at random"
		if round%2 == 1 {
			// Killed when QEMU stops the guest for the next cut, a
			// tracked one (this sender tracks already).
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			w, err := qmp.Dial(ctx, mon, qmp.Options{})
			if err != nil {
				t.Fatal(err)
			}
			ev := w.Subscribe("STOP")
			if _, err := ev.Wait(ctx, func(e qmp.Event) bool { return true }); err != nil {
				t.Fatalf("round %d: no STOP of a cut: %v", round, err)
			}
			snd.Kill()
			ev.Close()
			w.Close()
			cancel()
			where = "at a cut's STOP"
		} else {
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
			snd.Kill()
		}
		epochs, paths := committedEpochs(snd.Log())
		tracked += strings.Count(strings.Join(paths, " "), "tracked")
		if paths[0] != "full" {
			t.Errorf("round %d: the sender's first epoch %d took the %s path; a sender holding no tracker must cut in full", round, epochs[0], paths[0])
		}
		if st := waitRunning(t, mon, 15*time.Second); st != "running" {
			t.Fatalf("round %d: the guest is %q 15 s after the sender was killed", round, st)
		}
		// The guard acts once the sender is gone; its record says
		// whether the kill fell in a cut.
		var inThisCut, guardResumed bool
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			ev, res := p.guardRecord("guest-1")
			if inThisCut, guardResumed = ev > events, res > resumes; inThisCut {
				break
			}
		}
		if inThisCut {
			inCut++
		}
		if guardResumed {
			inPause++
		}
		// The kernel drops the userfaultfd with the sender's last
		// reference to it: no registration, no protected page.
		var left string
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			reg, prot, uffds = writeProtection(t, vm.Pid)
			if !reg && prot == 0 && uffds == 0 {
				break
			}
			left = fmt.Sprintf("registered %v, %d pages write-protected, %d userfaultfds in QEMU", reg, prot, uffds)
			if time.Now().After(deadline) {
				t.Fatalf("round %d: after the sender was killed: %s", round, left)
			}
		}
		n := len(vm.Ticks())
		if _, err := vm.WaitTicks(n+5, 30*time.Second); err != nil {
			t.Fatalf("round %d: the guest does not run after the kill: %v", round, err)
		}
		recs := p.checkReplicaRecords("guest-1")
		m := p.manifest("guest-1")
		if m.Epoch < committed || recs.Last < prevRecs {
			t.Fatalf("round %d: replica went back: epoch %d -> %d, records %d -> %d", round, committed, m.Epoch, prevRecs, recs.Last)
		}
		var pauses []string
		for i, ep := range epochs {
			if paths[i] == "tracked" {
				pauses = append(pauses, commitAttr(snd.Log(), ep, "guest_pause"))
			}
		}
		t.Logf("round %d: killed %s (in the cut: %v; guest resumed by the guard: %v), tracked epoch %d committed before (its sender's tracked pauses %v); replica at epoch %d, records %d..%d; no write protection left",
			round, where, inThisCut, guardResumed, e, pauses, m.Epoch, recs.First, recs.Last)
		committed, prevRecs = m.Epoch, recs.Last
	}

	// The last sender goes on tracking and ends cleanly.
	snd := testkit.Start(t, p.path("sender-last.log"), "send", "--config", cfg, "--log-level", "debug")
	e, ok := waitTrackedCommit(t, snd, committed, 3*time.Minute)
	if !ok {
		t.Fatalf("no tracked epoch after the kills:\n%s", logTail(snd.Log(), 40))
	}
	if _, ok := waitTrackedCommit(t, snd, e, time.Minute); !ok {
		t.Fatalf("no second tracked epoch after the kills:\n%s", logTail(snd.Log(), 40))
	}
	snd.Signal(syscall.SIGTERM)
	if code, err := snd.Wait(30 * time.Second); code != 0 || err != nil {
		t.Fatalf("sender exit %d %v:\n%s", code, err, logTail(snd.Log(), 40))
	}
	recs := p.checkReplicaRecords("guest-1")
	m := p.manifest("guest-1")
	if m.Epoch <= committed || recs.Last <= prevRecs {
		t.Fatalf("after the kills: epoch %d -> %d, records %d -> %d", committed, m.Epoch, prevRecs, recs.Last)
	}
	if ram, _ := p.senderStatus("guest-1")["last_result"].(map[string]any)["ram_path"].(string); ram != "tracked" {
		t.Errorf("status says ram_path %q after the last epoch, want tracked", ram)
	}
	t.Logf("%d kills (%d in a tracked cut, %d of them after its migration completed: the guard resumed the guest; %d restarted senders removed a killed one's leftovers in QEMU); %d tracked epochs committed before the kills; replica at epoch %d, records %d..%d, in %v",
		rounds, inCut, inPause, cleaned, tracked, m.Epoch, recs.First, recs.Last, time.Since(start).Round(time.Second))
	if inCut == 0 {
		t.Error("no kill landed in a tracked cut")
	}
}

// spoolOpen reports whether process pid holds a RAM spool file open
// (removed as soon as created, so the link says "(deleted)").
func spoolOpen(pid int) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, _ := os.ReadDir(dir)
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && strings.HasSuffix(l, ".spool (deleted)") {
			return true
		}
	}
	return false
}

// TestTrackedQEMUKilled kills the guest's QEMU when it stops for a
// tracked cut: the sender says the VM went away, the replica stays at its
// committed epoch and verifies, and once the sender ends nothing of it is
// left: no drsync process (the guest guard included), no cut mark, socket
// or fleecing overlay in its state directory, and status does not report
// a paused guest.
func TestTrackedQEMUKilled(t *testing.T) {
	vm, mon := trackedKillGuest(t)
	p := livePair(t, vm, "")
	_, port := slowRelay(t, p, 4<<20)
	cfg := trackedConfig(p, vm, "sender-tracked.toml", port)
	snd := testkit.Start(t, p.path("sender.log"), "send", "--config", cfg, "--log-level", "debug")
	if _, ok := waitTrackedCommit(t, snd, 0, 3*time.Minute); !ok {
		t.Fatalf("no tracked epoch:\n%s", logTail(snd.Log(), 40))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w, err := qmp.Dial(ctx, mon, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ev := w.Subscribe("STOP")
	if _, err := ev.Wait(ctx, func(e qmp.Event) bool { return true }); err != nil {
		t.Fatalf("no STOP of a cut: %v", err)
	}
	before := p.manifest("guest-1").Epoch
	vm.Kill()
	if !snd.WaitLog("went away", 30*time.Second) {
		t.Fatalf("the sender did not report the VM's exit:\n%s", logTail(snd.Log(), 40))
	}
	said := grepLines(snd.Log(), "went away", 1)
	if !strings.Contains(said, vm.QMPSocket) {
		t.Errorf("the sender's message does not name the VM's QMP socket %s: %s", vm.QMPSocket, said)
	}
	// Its next attempt finds nothing at the QMP socket.
	if !snd.WaitLog("nothing listens at "+vm.QMPSocket, 30*time.Second) {
		t.Fatalf("the sender's next attempt did not find the VM gone:\n%s", logTail(snd.Log(), 20))
	}
	said += "\n" + grepLines(snd.Log(), "nothing listens", 1)
	p.verify("guest-1")
	recs := p.checkReplicaRecords("guest-1")
	after := p.manifest("guest-1").Epoch
	if after < before {
		t.Fatalf("replica went back from epoch %d to %d", before, after)
	}
	snd.Signal(syscall.SIGTERM)
	code, werr := snd.Wait(30 * time.Second)
	if werr != nil {
		t.Fatalf("the sender did not end on SIGTERM: %v\n%s", werr, logTail(snd.Log(), 40))
	}
	// The guest guard ends once it saw there is no guest to resume.
	var procs []string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if procs = drsyncProcs(t); len(procs) == 0 {
			break
		}
	}
	if len(procs) > 0 {
		t.Errorf("drsync processes left after the sender ended:\n%s", strings.Join(procs, "\n"))
	}
	// The VM is gone, not paused: status must not send the operator to
	// resume it.
	status := testkit.MustRun(t, "status", "--json", "--config", cfg)
	if strings.Contains(status, `"paused": true`) {
		t.Errorf("status reports a paused guest after the VM was killed:\n%s", status)
	}
	files := p.stateFiles()
	for _, f := range files {
		base := filepath.Base(f)
		if base == "cut-in-flight" || strings.HasPrefix(base, "drsync-") || strings.HasSuffix(base, ".tmp") || strings.HasSuffix(base, ".sock") {
			t.Errorf("left in the state directory: %s", f)
		}
	}
	t.Logf("QEMU killed in a tracked cut after epoch %d; the sender said:\n%s\nreplica at epoch %d, records %d..%d; sender exit %d; state directory: %v",
		before, said, after, recs.First, recs.Last, code, files)
}

// TestTrackedReceiverRestarted SIGKILLs the receiver at random moments of
// tracked epochs and starts it again, four times, the sender frozen
// meanwhile: the replica verifies at a committed epoch that never goes
// back, and the sender (its tracker held all along) reconnects and goes
// on committing tracked epochs.
func TestTrackedReceiverRestarted(t *testing.T) {
	vm, _ := trackedKillGuest(t)
	p := livePair(t, vm, "")
	_, port := slowRelay(t, p, 4<<20)
	cfg := trackedConfig(p, vm, "sender-tracked.toml", port)
	snd := testkit.Start(t, p.path("sender.log"), "send", "--config", cfg, "--log-level", "debug")
	e, ok := waitTrackedCommit(t, snd, 0, 3*time.Minute)
	if !ok {
		t.Fatalf("no tracked epoch:\n%s", logTail(snd.Log(), 40))
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 12))
	start := time.Now()
	var committed, prevRecs uint64
	reconnected := 0
	const rounds = 4
	for round := 1; round <= rounds; round++ {
		time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		snd.Signal(syscall.SIGSTOP)
		p.rcv.Kill()
		p.startReceiver()
		recs := p.checkReplicaRecords("guest-1")
		m := p.manifest("guest-1")
		if m.Epoch < committed || recs.Last < prevRecs {
			t.Fatalf("round %d: replica went back: epoch %d -> %d, records %d -> %d", round, committed, m.Epoch, prevRecs, recs.Last)
		}
		committed, prevRecs = m.Epoch, recs.Last
		snd.Signal(syscall.SIGCONT)
		next, ok := waitTrackedCommit(t, snd, max(e, m.Epoch), 2*time.Minute)
		if !ok {
			t.Fatalf("round %d: no tracked epoch after the receiver restarted (replica at %d):\n%s\nreceiver:\n%s",
				round, m.Epoch, logTail(snd.Log(), 40), logTail(p.rcv.Log(), 20))
		}
		attempts, _ := strconv.Atoi(commitAttr(snd.Log(), m.Epoch+1, "attempts"))
		if attempts > 1 {
			reconnected++
		}
		t.Logf("round %d: receiver killed after tracked epoch %d; restarted, the replica at epoch %d (records %d..%d), epoch %d took %d connection attempts; the sender committed tracked epoch %d",
			round, e, m.Epoch, recs.First, recs.Last, m.Epoch+1, attempts, next)
		e = next
	}
	snd.Signal(syscall.SIGTERM)
	if code, err := snd.Wait(30 * time.Second); code != 0 || err != nil {
		t.Fatalf("sender exit %d %v:\n%s", code, err, logTail(snd.Log(), 40))
	}
	recs := p.checkReplicaRecords("guest-1")
	m := p.manifest("guest-1")
	if m.Epoch <= committed || recs.Last < prevRecs {
		t.Fatalf("at the end: epoch %d -> %d, records %d -> %d", committed, m.Epoch, prevRecs, recs.Last)
	}
	epochs, paths := committedEpochs(snd.Log())
	full := 0
	for _, path := range paths {
		if path != "tracked" {
			full++
		}
	}
	t.Logf("%d receiver restarts in %v (%d in an epoch, which reconnected and committed): %d epochs committed, %d of them full (the first), %d tracked; replica at epoch %d, records %d..%d",
		rounds, time.Since(start).Round(time.Second), reconnected, len(epochs), full, len(epochs)-full, m.Epoch, recs.First, recs.Last)
	if full != 1 {
		t.Errorf("%d full epochs; want only the first: a restarted receiver should not cost the tracker", full)
	}
	if reconnected == 0 {
		t.Error("no epoch needed a new connection: the kills all fell between epochs")
	}
}

// logTail is the last n lines of a process's log.
func logTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
