package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/wanemu"
)

// wanPair is a DR pair whose receiver runs in namespace B of an emulated
// WAN link and whose sender runs in namespace A, so that every epoch
// crosses the link.
func wanPair(t testing.TB, em *wanemu.Emulator, qmp, vmExtra, senderExtra string) *pair {
	t.Helper()
	spec := vmSpec{name: "guest-1", qmp: qmp, extra: vmExtra,
		disks: []diskSpec{{name: "vda", node: "disk0"}, {name: "vdb", node: "disk1"}}}
	p := newPair(t, []vmSpec{spec}, senderExtra)
	local := fmt.Sprintf("127.0.0.1:%d", p.port)
	remote := fmt.Sprintf("%s:%d", em.AddrB(), p.port)
	for _, cfg := range []string{p.recvCfg, p.sendCfg} {
		b := string(mustRead(t, cfg))
		if !strings.Contains(b, local) {
			t.Fatalf("%s does not name %s", cfg, local)
		}
		p.write(cfg[len(p.dir)+1:], strings.ReplaceAll(b, local, remote))
	}
	p.starts++
	p.rcv = testkit.StartWrapped(t, p.path("receiver.log"), func(c *exec.Cmd) error { return em.Wrap(wanemu.SideB, c) }, "receive", "--config", p.recvCfg)
	if !p.rcv.WaitLog("listening", 30*time.Second) {
		t.Fatalf("receiver did not start:\n%s", p.rcv.Log())
	}
	return p
}

// committedEpoch is an "epoch committed" line of the sender's JSON log.
type committedEpoch struct {
	Time         time.Time     `json:"time"` // when the commit was acknowledged
	Epoch        uint64        `json:"epoch"`
	Cut          time.Time     `json:"cut"`
	EpochLength  time.Duration `json:"epoch_length"`
	WireBytes    uint64        `json:"wire_bytes"`
	SendTime     time.Duration `json:"send_time"`
	PredictedLag time.Duration `json:"predicted_lag"`
	NextEpoch    time.Duration `json:"next_epoch"`
	Compression  string        `json:"compression"`
	RAMRefPages  int64         `json:"ram_pages_ref"`
	GuestPause   time.Duration `json:"guest_pause"`
}

// logRecord is what every line of a sender's JSON log has.
type logRecord struct {
	Msg  string    `json:"msg"`
	Time time.Time `json:"time"`
}

// jsonLog calls fn with each line of a JSON log that parses, its common
// fields decoded.
func jsonLog(log string, fn func(rec logRecord, line []byte)) {
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var rec logRecord
		if json.Unmarshal(sc.Bytes(), &rec) == nil {
			fn(rec, sc.Bytes())
		}
	}
}

// senderLog reads the committed epochs and the breach warnings (their log
// times) from a sender's JSON log.
func senderLog(t testing.TB, log string) (epochs []committedEpoch, breaches, recoveries []time.Time) {
	t.Helper()
	jsonLog(log, func(rec logRecord, line []byte) {
		switch {
		case rec.Msg == "epoch committed":
			var e committedEpoch
			if err := json.Unmarshal(line, &e); err != nil {
				t.Fatalf("log line %s: %v", line, err)
			}
			epochs = append(epochs, e)
		case strings.HasPrefix(rec.Msg, "RPO target will be missed"):
			breaches = append(breaches, rec.Time)
		case strings.HasPrefix(rec.Msg, "RPO target within reach"):
			recoveries = append(recoveries, rec.Time)
		}
	})
	return epochs, breaches, recoveries
}

func medianOf(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestLiveWANBandwidthDrop protects a running guest over an emulated WAN
// whose bandwidth drops to a quarter for a while, with adaptive epochs and
// an RPO target. While the link is fast the epochs stay short; on the slow
// link they lengthen (more overwrites coalesce per epoch) and the lag
// stays within the target, or the breach is reported before the lag
// crosses it; once the bandwidth returns the epochs shorten again.
func TestLiveWANBandwidthDrop(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest and runs an emulated WAN for minutes")
	}
	if err := wanemu.Check(); err != nil {
		t.Skipf("no WAN emulator here: %v", err)
	}
	const (
		target = 30 * time.Second
		fastBW = 40e6 // bits/s
	)
	fast := wanemu.Settings{Delay: 10 * time.Millisecond, RateBitsPerSec: fastBW}
	slow := fast
	slow.RateBitsPerSec = fastBW / 4
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	em, err := wanemu.Start(ctx, wanemu.Options{AtoB: fast, BtoA: fast, MaxLifetime: 20 * time.Minute, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer em.Stop()
	// 1.5 MiB/s of random pages rewritten in an 8 MiB buffer: short epochs
	// carry about 1.5 MB/s of incompressible changes, a third of the fast
	// link and more than the slow one; long epochs coalesce them.
	vm, _ := liveGuest(t, 256, map[string]string{"dirty_mib": "8", "dirty_rate_kib": "1536"})
	p := wanPair(t, em, vm.QMPSocket, fmt.Sprintf("rpo_target = %q\nmin_interval = \"2s\"\ncompression = \"auto\"", target), "")
	snd := testkit.StartWrapped(t, p.path("sender.log"), func(c *exec.Cmd) error { return em.Wrap(wanemu.SideA, c) },
		"send", "--config", p.sendCfg, "--log-json")

	waitEpochs := func(n int, d time.Duration) {
		t.Helper()
		deadline := time.Now().Add(d)
		for p.senderEpochs("guest-1") < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d epochs did not commit within %v:\n%s", n, d, snd.Log())
			}
			if code, err := snd.Wait(0); err == nil {
				t.Fatalf("sender exited (%d):\n%s", code, snd.Log())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitEpochs(2, 3*time.Minute) // the initial copy, then one incremental epoch
	fastFrom := time.Now()
	time.Sleep(30 * time.Second)
	dropAt := time.Now()
	em.SetBoth(slow)
	time.Sleep(80 * time.Second)
	restoreAt := time.Now()
	em.SetBoth(fast)
	time.Sleep(50 * time.Second)
	snd.Signal(syscall.SIGTERM)
	if code, err := snd.Wait(time.Minute); code != 0 || err != nil {
		t.Fatalf("sender exit %d %v:\n%s", code, err, snd.Log())
	}
	end := time.Now()

	epochs, breaches, recoveries := senderLog(t, snd.Log())
	var phase1, phase2, phase3 []time.Duration
	var worst time.Duration // the peak lag on the slow link: before commit k the replica holds cut k-1
	var worstAt time.Time
	for i, e := range epochs {
		t.Logf("epoch %3d cut %s length %6v wire %8d B lag at commit %6v, next %6v at %s, predicted lag %v",
			e.Epoch, e.Cut.Format("15:04:05.0"), e.EpochLength.Round(100*time.Millisecond), e.WireBytes,
			e.Time.Sub(e.Cut).Round(100*time.Millisecond), e.NextEpoch, e.Compression, e.PredictedLag)
		switch {
		case e.Cut.After(fastFrom) && e.Cut.Before(dropAt):
			phase1 = append(phase1, e.EpochLength)
		case e.Cut.After(dropAt.Add(25*time.Second)) && e.Cut.Before(restoreAt):
			phase2 = append(phase2, e.EpochLength)
		case e.Cut.After(restoreAt.Add(25 * time.Second)):
			phase3 = append(phase3, e.EpochLength)
		}
		if i > 0 && e.Time.After(dropAt) && e.Cut.Before(restoreAt) {
			if lag := e.Time.Sub(epochs[i-1].Cut); lag > worst {
				worst, worstAt = lag, e.Time
			}
		}
	}
	m1, m2, m3 := medianOf(phase1), medianOf(phase2), medianOf(phase3)
	t.Logf("median epoch length: %v at %g Mbit/s (%d epochs), %v at a quarter (%d), %v after it returned (%d)",
		m1, fastBW/1e6, len(phase1), m2, len(phase2), m3, len(phase3))
	t.Logf("peak lag while slow: %v (target %v); breach warnings at %v, recoveries at %v; link stats %+v",
		worst.Round(100*time.Millisecond), target, breaches, recoveries, em.Stats())
	t.Logf("drsync status:\n%s", testkit.MustRun(t, "status", "--config", p.sendCfg))
	if len(phase1) < 3 || len(phase2) < 2 || len(phase3) < 2 {
		t.Fatalf("too few epochs per phase (%d, %d, %d) to compare", len(phase1), len(phase2), len(phase3))
	}
	if m2 < m1*3/2 {
		t.Errorf("epochs did not lengthen when the bandwidth dropped: median %v before, %v during", m1, m2)
	}
	if m3 > m2*2/3 {
		t.Errorf("epochs did not shorten when the bandwidth returned: median %v during, %v after", m2, m3)
	}
	if worst > target {
		// Missing the target is allowed only if it was foretold.
		if len(breaches) == 0 || !breaches[0].Before(worstAt) {
			t.Errorf("the lag reached %v (target %v) at %s without a breach predicted before it (warnings %v)",
				worst, target, worstAt.Format("15:04:05"), breaches)
		}
	}
	if len(breaches) > len(recoveries) {
		t.Errorf("a breach is still predicted %v after the bandwidth returned", end.Sub(restoreAt).Round(time.Second))
	}
	p.checkReplicaRecords("guest-1")
}
