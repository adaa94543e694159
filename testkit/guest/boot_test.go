package guest

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"
)

// TestBoot boots the real guest on a fresh 64 MiB raw disk, checks its
// console and its record ring, then boots it again on the same disk and
// checks that the workload resumes the ring.
//
// Observed on the development host (2 CPUs, TCG, QEMU 7.2, Debian kernel
// 6.1): 6.7-6.9 s from starting QEMU to the first TICK when the host was
// idle, 17.7 s when other TCG guests kept it busy (load 6); then 20 TICK
// lines and 20 records per second and the counter at 88-95 a second (it
// aims at 100). Scanning the empty 64 MiB ring before START takes 0.3 s. The
// test takes 15 s on an idle host.
func TestBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM under TCG; skipped in -short mode")
	}
	img := filepath.Join(t.TempDir(), "disk.raw")
	const size = 64 << 20
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}

	vm := Launch(t, Options{MemMiB: 256, Disks: []Disk{{Path: img}}})
	first, err := vm.WaitFor(2*time.Minute, func(l Line) bool { return strings.HasPrefix(l.Text, "TICK ") })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitFor(0, func(l Line) bool { return l.Text == "START" }); err != nil {
		t.Fatalf("no START line before the first TICK: %v", err)
	}
	if _, err := vm.WaitTicks(20, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitFor(time.Minute, func(l Line) bool { return tickSeq(l) >= 10 }); err != nil {
		t.Fatal(err)
	}
	vm.Kill()

	ticks := vm.Ticks()
	checkTicks(t, ticks)
	last := ticks[len(ticks)-1]
	span := last.At.Sub(ticks[0].At).Seconds()
	t.Logf("boot: first TICK %.2fs after QEMU started; %d ticks at %.1f/s; %d records at %.1f/s; counter %.0f/s; max gap %v",
		first.At.Sub(vm.Started).Seconds(), len(ticks), float64(len(ticks)-1)/span,
		last.Seq, float64(last.Seq-ticks[0].Seq)/span, float64(last.Counter-ticks[0].Counter)/span,
		MaxGap(ticks, ticks[0].At, last.At))

	recs := verifyImage(t, img, size)
	if recs.First != 1 || recs.Last < last.Seq || recs.Last > last.Seq+5 {
		t.Fatalf("ring holds %+v; the last TICK reported seq %d", recs, last.Seq)
	}

	// The second boot also has a qcow2 second disk, checks the QMP node
	// names and ends with QMP quit.
	t.Run("resume", func(t *testing.T) {
		hosttools.Need(t, "qemu-img")
		extra := filepath.Join(t.TempDir(), "extra.qcow2")
		hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", extra, "16M")
		vm := Launch(t, Options{
			Disks: []Disk{{Path: img, Format: "raw"}, {Path: extra}},
			Args:  map[string]string{"rate": "50", "drsync.dirty_mib": "8"},
		})
		nodes := qmpNodes(t, vm.QMPSocket)
		if want := "disk0=raw disk1=qcow2 file0=file file1=file"; nodes != want {
			t.Fatalf("QMP block nodes %q, want %q", nodes, want)
		}
		l, err := vm.WaitFor(2*time.Minute, func(l Line) bool {
			return strings.HasPrefix(l.Text, "RESUME ") || l.Text == "START" || strings.HasPrefix(l.Text, "TICK ")
		})
		if err != nil {
			t.Fatal(err)
		}
		if want := "RESUME " + strconv.FormatUint(recs.Last, 10); l.Text != want {
			t.Fatalf("got %q, want %q", l.Text, want)
		}
		target := recs.Last + 25
		if _, err := vm.WaitFor(time.Minute, func(l Line) bool { return tickSeq(l) >= target }); err != nil {
			t.Fatal(err)
		}
		qmp(t, vm.QMPSocket, `{"execute":"quit"}`)
		if err := vm.Wait(30 * time.Second); err != nil {
			t.Fatalf("QEMU after quit: %v", err)
		}
		ticks := vm.Ticks()
		checkTicks(t, ticks)
		if ticks[0].Seq < recs.Last {
			t.Fatalf("first TICK after resume reports seq %d, below %d", ticks[0].Seq, recs.Last)
		}
		again := verifyImage(t, img, size)
		if again.First != 1 || again.Last < target {
			t.Fatalf("ring after resume holds %+v, want 1..>=%d", again, target)
		}
		if !strings.Contains(strings.Join(lineTexts(vm.Lines()), "\n"), "PARAMS rate=50 dirty_mib=8 ") {
			t.Fatalf("workload did not take the parameters: %q", lineTexts(vm.Lines())[:3])
		}
	})
}

// tickSeq is the seq of a TICK line, 0 for other lines.
func tickSeq(l Line) uint64 {
	f := strings.Fields(l.Text)
	if len(f) != 3 || f[0] != "TICK" {
		return 0
	}
	n, _ := strconv.ParseUint(f[2], 10, 64)
	return n
}

// checkTicks checks that counters and seqs never go down and that the
// counter advanced.
func checkTicks(t *testing.T, ticks []Tick) {
	t.Helper()
	if len(ticks) < 2 {
		t.Fatalf("only %d ticks", len(ticks))
	}
	for i := 1; i < len(ticks); i++ {
		a, b := ticks[i-1], ticks[i]
		if b.Counter < a.Counter || b.Seq < a.Seq || b.At.Before(a.At) {
			t.Fatalf("tick %d went backwards: %+v after %+v", i, b, a)
		}
	}
	if ticks[len(ticks)-1].Counter <= ticks[0].Counter {
		t.Fatalf("counter did not advance: %+v .. %+v", ticks[0], ticks[len(ticks)-1])
	}
}

func verifyImage(t *testing.T, path string, size int64) Records {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := VerifyRecords(f, size)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func lineTexts(lines []Line) []string {
	var s []string
	for _, l := range lines {
		s = append(s, l.Text)
	}
	return s
}

// qmp sends commands to a QMP socket after the handshake and returns their
// replies, skipping events; it fails the test on an error reply.
func qmp(t *testing.T, sock string, cmds ...string) []json.RawMessage {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	var replies []json.RawMessage
	for _, cmd := range append([]string{`{"execute":"qmp_capabilities"}`}, cmds...) {
		if _, err := c.Write([]byte(cmd + "\n")); err != nil {
			t.Fatal(err)
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				t.Fatalf("QMP %s: %v", cmd, err)
			}
			var msg struct {
				Return json.RawMessage
				Error  *struct{ Desc string }
			}
			if err := json.Unmarshal(line, &msg); err != nil {
				t.Fatalf("QMP %s: %v: %s", cmd, err, line)
			}
			if msg.Error != nil {
				t.Fatalf("QMP %s: %s", cmd, msg.Error.Desc)
			}
			if msg.Return != nil {
				replies = append(replies, msg.Return)
				break
			}
		}
	}
	return replies[1:]
}

// qmpNodes lists the named block nodes as sorted "name=driver" words.
func qmpNodes(t *testing.T, sock string) string {
	t.Helper()
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string
	}
	if err := json.Unmarshal(qmp(t, sock, `{"execute":"query-named-block-nodes"}`)[0], &nodes); err != nil {
		t.Fatal(err)
	}
	var words []string
	for _, n := range nodes {
		words = append(words, n.NodeName+"="+n.Drv)
	}
	slices.Sort(words)
	return strings.Join(words, " ")
}
