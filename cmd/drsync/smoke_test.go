package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/internal/jsonfile"
	"github.com/drsync/drsync/receiver/serve"
	"github.com/drsync/drsync/replica"
)

// drsync runs a subcommand in-process and returns its exit code and output.
func drsync(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb hosttools.SyncBuffer
	code = run(args, &out, &errb)
	t.Logf("drsync %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return code, out.String(), errb.String()
}

var fingerprintLine = regexp.MustCompile(`(?m)^\s*fingerprint = "(sha256:[0-9a-f]{64})"$`)

// keygen makes an identity and returns the fingerprint keygen printed.
func keygen(t *testing.T, dir, name string) string {
	t.Helper()
	code, out, _ := drsync(t, "keygen", "--out", dir, "--name", name)
	if code != exitOK {
		t.Fatalf("keygen %s: exit %d", name, code)
	}
	m := fingerprintLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("keygen printed no fingerprint line:\n%s", out)
	}
	return m[1]
}

func readText(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// guestImage is size bytes of random blocks separated by zeros, like a
// partly used disk.
func guestImage(rng *rand.Rand, size int) []byte {
	b := make([]byte, size)
	for off := 0; off < size; off += 64 << 10 {
		if rng.IntN(3) > 0 {
			for i := off; i < min(off+64<<10, size); i += 8 {
				v := rng.Uint64()
				for j := 0; j < 8 && i+j < size; j++ {
					b[i+j] = byte(v >> (8 * j))
				}
			}
		}
	}
	return b
}

// treeState fingerprints every file under dir (name, size, content), to
// prove that nothing was written there.
func treeState(t *testing.T, dir string) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, _ := d.Info()
		state[p] = fmt.Sprintf("%d %x %s", len(b), sha256.Sum256(b), info.ModTime())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return state
}

func TestSmoke(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	fpSender := keygen(t, keys, "site-a")
	fpReceiver := keygen(t, keys, "site-b")
	fpOther := keygen(t, keys, "site-c") // pinned, but for another VM
	keygen(t, keys, "intruder")          // known to nobody

	// keygen never overwrites an identity.
	before, _ := os.ReadFile(filepath.Join(keys, "site-a.key"))
	if code, _, stderr := drsync(t, "keygen", "--out", keys, "--name", "site-a"); code != exitFailure || !strings.Contains(stderr, "already exists") {
		t.Fatalf("second keygen of site-a: exit %d, %s", code, stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(keys, "site-a.key")); !bytes.Equal(before, after) {
		t.Fatal("second keygen changed the key")
	}
	if st, err := os.Stat(filepath.Join(keys, "site-a.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", st.Mode(), err)
	}

	// The VM: a raw disk, a RAM file, a device state blob.
	rng := rand.New(rand.NewPCG(7, 11))
	disk := guestImage(rng, 4<<20+64<<10)
	ram := guestImage(rng, 2<<20)
	writeFile(t, filepath.Join(dir, "images/web-1.raw"), disk)
	writeFile(t, filepath.Join(dir, "images/web-1.ram"), ram)
	writeFile(t, filepath.Join(dir, "images/web-1.dev"), []byte("device state of web-1"))

	// The receiver, on a port the kernel picks.
	rcvConf := filepath.Join(dir, "receiver.toml")
	writeFile(t, rcvConf, []byte(fmt.Sprintf(`
listen = "127.0.0.1:0"
ack_every = "1MiB"
[identity]
cert = "keys/site-b.crt"
key = "keys/site-b.key"
[storage]
dir = "replicas"
[[sender]]
name = "site-a"
fingerprint = %q
vms = ["web-1"]
[[sender]]
name = "site-c"
fingerprint = %q
vms = ["db-1"]
`, fpSender, fpOther)))
	addr, stopReceiver := runReceiver(t, rcvConf)

	// A second receiver on the same storage is refused.
	if code, _, stderr := drsync(t, "receive", "--config", rcvConf); code != exitBusy || !strings.Contains(stderr, serve.LockFile) {
		t.Fatalf("second receiver: exit %d: %s", code, stderr)
	}

	senderConf := func(name, identity string) string {
		p := filepath.Join(dir, name)
		writeFile(t, p, []byte(fmt.Sprintf(`
[identity]
cert = "keys/%[1]s.crt"
key = "keys/%[1]s.key"
[receiver]
address = %[2]q
fingerprints = [%[3]q]
[state]
dir = "state-%[1]s"
[[vm]]
name = "web-1"
compression = "fast"
device_state = "images/web-1.dev"
  [[vm.disk]]
  name = "vda"
  path = "images/web-1.raw"
  format = "raw"
  block_size = "64KiB"
  [[vm.ram]]
  name = "pc.ram"
  path = "images/web-1.ram"
`, identity, addr.String(), fpReceiver)))
		return p
	}

	// One epoch, as a timer would run it.
	sndConf := senderConf("sender.toml", "site-a")
	if code, _, _ := drsync(t, "send", "--config", sndConf, "--once"); code != exitOK {
		t.Fatalf("send --once: exit %d", code)
	}

	// The replica is exactly the source.
	repDir := filepath.Join(dir, "replicas", "web-1")
	code, out, _ := drsync(t, "verify", "--replica", repDir)
	if code != exitOK || !strings.Contains(out, "Result: OK") {
		t.Fatalf("verify: exit %d\n%s", code, out)
	}
	mb, err := os.ReadFile(filepath.Join(repDir, "MANIFEST"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := replica.ParseManifest(mb)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range m.Targets {
		want := map[string][]byte{"vda": disk, "pc.ram": ram}[tg.Name]
		got, err := os.ReadFile(filepath.Join(repDir, tg.File))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("replica %s %s differs from the source (%v)", tg.Kind, tg.Name, err)
		}
	}
	if m.DeviceState == nil {
		t.Fatal("replica has no device state")
	}

	// status, from both sides.
	for _, c := range []struct {
		conf, bytesKey string
	}{{sndConf, "bytes_sent"}, {rcvConf, "bytes_received"}} {
		code, out, _ := drsync(t, "status", "--config", c.conf, "--json")
		if code != exitOK {
			t.Fatalf("status %s: exit %d", c.conf, code)
		}
		var rows []map[string]any
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		// The receiver also lists db-1, which nobody has sent yet.
		var row map[string]any
		for _, r := range rows {
			if r["vm"] == "web-1" {
				row = r
			} else if r["epoch"] != 0.0 {
				t.Errorf("status %s: %v", c.conf, r)
			}
		}
		if row == nil || row["epoch"] != 1.0 {
			t.Fatalf("status %s: %v", c.conf, rows)
		}
		if n, _ := row[c.bytesKey].(float64); n <= 0 {
			t.Errorf("status %s: %s = %v", c.conf, c.bytesKey, row[c.bytesKey])
		}
		if _, ok := row["rpo_lag_seconds"]; !ok {
			t.Errorf("status %s: no RPO lag", c.conf)
		}
	}
	if code, out, _ := drsync(t, "status", "--config", sndConf); code != exitOK || !strings.Contains(out, "web-1") {
		t.Fatalf("status table: exit %d\n%s", code, out)
	}
	var rst serve.Status
	if err := jsonfile.Read(filepath.Join(repDir, serve.StatusFile), &rst); err != nil || rst.Epoch != 1 || rst.LastPeer == nil || rst.LastPeer.Fingerprint != fpSender {
		t.Fatalf("receiver STATUS.json: %+v, %v", rst, err)
	}

	// Refusals: a certificate nobody pinned, and a pinned sender writing a
	// VM it was not given. Neither may touch the replica.
	replicas := treeState(t, filepath.Join(dir, "replicas"))
	for _, id := range []string{"intruder", "site-c"} {
		conf := senderConf("sender-"+id+".toml", id)
		code, _, stderr := drsync(t, "send", "--config", conf, "--once")
		if code != exitRefused {
			t.Fatalf("send as %s: exit %d, want %d", id, code, exitRefused)
		}
		if id == "site-c" && !strings.Contains(stderr, "unauthorized") {
			t.Errorf("send as %s: message does not say why: %s", id, stderr)
		}
	}
	// A receiver whose certificate is not the pinned one is refused by
	// the sender itself.
	wrongPin := edit(t, readText(t, sndConf), fpReceiver, fpOther)
	writeFile(t, filepath.Join(dir, "sender-wrong-pin.toml"), []byte(wrongPin))
	if code, _, stderr := drsync(t, "send", "--config", filepath.Join(dir, "sender-wrong-pin.toml"), "--once"); code != exitRefused || !strings.Contains(stderr, fpReceiver) {
		t.Fatalf("send to an unpinned receiver: exit %d: %s", code, stderr)
	}
	if after := treeState(t, filepath.Join(dir, "replicas")); fmt.Sprint(after) != fmt.Sprint(replicas) {
		t.Fatalf("a refused sender changed the replicas:\nbefore %v\nafter  %v", replicas, after)
	}

	// A second epoch after the guest wrote a little sends only that.
	copy(disk[1<<20:], bytes.Repeat([]byte{0xee}, 100<<10))
	writeFile(t, filepath.Join(dir, "images/web-1.raw"), disk)
	if code, _, _ := drsync(t, "send", "--config", sndConf, "--once", "--vm", "web-1"); code != exitOK {
		t.Fatalf("second send: exit %d", code)
	}
	var sst agent.Status
	if err := jsonfile.Read(filepath.Join(dir, "state-site-a", "web-1", agent.StatusFile), &sst); err != nil || sst.Epoch != 2 || sst.Epochs != 2 || sst.LastResult == nil || sst.LastResult.DataBytes > 256<<10 {
		t.Fatalf("sender status after epoch 2: %+v (last %+v), %v", sst, sst.LastResult, err)
	}
	if code, out, _ := drsync(t, "verify", "--replica", repDir, "--json"); code != exitOK || !strings.Contains(out, `"ok": true`) || !strings.Contains(out, `"epoch": 2`) {
		t.Fatalf("verify --json after epoch 2: exit %d\n%s", code, out)
	}

	// Continuous mode: epochs keep coming until the process is stopped.
	contConf := filepath.Join(dir, "sender-continuous.toml")
	writeFile(t, contConf, []byte(edit(t, readText(t, sndConf), `compression = "fast"`, `min_interval = "1s"`)))
	sctx, stopSender := context.WithCancel(context.Background())
	sendDone := make(chan int, 1)
	var sendLog hosttools.SyncBuffer
	go func() {
		sendDone <- runEnv(sctx, &env{stdout: &sendLog, stderr: &sendLog, now: time.Now}, []string{"send", "--config", contConf})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for sst.Epoch < 4 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		jsonfile.Read(filepath.Join(dir, "state-site-a", "web-1", agent.StatusFile), &sst)
	}
	stopSender()
	select {
	case code := <-sendDone:
		if code != exitOK || sst.Epoch < 4 {
			t.Fatalf("continuous send: exit %d after epoch %d:\n%s", code, sst.Epoch, sendLog.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("continuous send did not stop")
	}

	if code := stopReceiver(); code != exitOK {
		t.Fatalf("receive stopped with exit %d", code)
	}

	// While an epoch is applied the replica is locked: verify waits, then
	// gives up with exit 5.
	lock, err := os.OpenFile(filepath.Join(repDir, "LOCK"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if code, _, _ := drsync(t, "verify", "--replica", repDir, "--wait", "300ms"); code != exitBusy || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("verify of a locked replica: exit %d after %s", code, time.Since(start))
	}
	lock.Close()

	// A damaged image is reported, with exit 3.
	img := filepath.Join(repDir, m.Targets[0].File)
	b := []byte(readText(t, img))
	b[12345] ^= 0xff
	writeFile(t, img, b)
	if code, out, _ := drsync(t, "verify", "--replica", repDir); code != exitMismatch || !strings.Contains(out, "MISMATCH") {
		t.Fatalf("verify of a damaged replica: exit %d\n%s", code, out)
	}
}
