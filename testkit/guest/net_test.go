package guest

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// freeUDPPort is a loopback UDP port nobody listens on right now.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// TestMessaging boots two guests joined by a loopback link: the sender's
// numbered messages reach the receiver, which records them, and neither
// disk ever shows a message the sender had not recorded first.
func TestMessaging(t *testing.T) {
	if testing.Short() {
		t.Skip("boots two VMs under TCG; skipped in -short mode")
	}
	pa, pb := freeUDPPort(t), freeUDPPort(t)
	dir := t.TempDir()
	const size = 64 << 20
	boot := func(name string, args map[string]string, nic []string) (*VM, string) {
		img := filepath.Join(dir, name+".raw")
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, size); err != nil {
			t.Fatal(err)
		}
		return Launch(t, Options{Disks: []Disk{{Path: img}}, Args: args, ExtraQEMUArgs: nic}), img
	}
	b, imgB := boot("b", MessageArgs("recv", "10.77.0.2/24", "", 0), NIC(pb, pa, "52:54:00:77:00:02"))
	a, imgA := boot("a", MessageArgs("send", "10.77.0.1/24", "10.77.0.2", 20), NIC(pa, pb, "52:54:00:77:00:01"))
	for _, vm := range []*VM{a, b} {
		if _, err := vm.WaitFor(3*time.Minute, func(l Line) bool { return strings.HasPrefix(l.Text, "NET ") }); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("both guests have their network up")
	// Messages sent before the receiver listens are lost (the sender may
	// boot faster on a loaded host): 40 are counted from the first it got.
	var first uint64
	if _, err := b.WaitFor(2*time.Minute, func(l Line) bool {
		tk, ok := parseTick(l.Text)
		if ok && tk.Seq > 0 && first == 0 {
			first = tk.Seq
		}
		return ok && first > 0 && tk.Seq >= first+40
	}); err != nil {
		t.Fatalf("the receiver did not record 40 messages after its first: %v", err)
	}
	b.Kill() // the receiver first, so its disk is the older of the two
	a.Kill()
	open := func(path string) (*os.File, int64) {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		st, _ := f.Stat()
		return f, st.Size()
	}
	fa, sa := open(imgA)
	sent, err := VerifyRecords(fa, sa)
	if err != nil {
		t.Fatalf("sender's disk: %v", err)
	}
	fb, sb := open(imgB)
	got, err := MessageSeqs(fb, sb)
	if err != nil {
		t.Fatalf("receiver's disk: %v", err)
	}
	t.Logf("sender recorded messages %d..%d, receiver %d of them, up to %d", sent.First, sent.Last, len(got), got[len(got)-1])
	if len(got) < 40 || got[len(got)-1] > sent.Last {
		t.Fatalf("receiver holds %d messages up to %d; the sender recorded up to %d", len(got), got[len(got)-1], sent.Last)
	}
}
