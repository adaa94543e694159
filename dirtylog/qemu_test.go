package dirtylog

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit/guest"
)

func qmpDo(t *testing.T, s *qmp.Session, cmd string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Execute(ctx, cmd, nil, nil); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
}

func readRAM(t *testing.T, pid int, rs []Region) []byte {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []byte
	for _, r := range rs {
		b := make([]byte, r.End-r.Start)
		if _, err := f.ReadAt(b, int64(r.Start)); err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

// TestTrackQEMUGuest tracks a TCG guest whose RAM is a shared memfd
// backend: between two stops of the guest, every page whose bytes changed
// is among the pages Scan reports (none missing), the reported set is a
// small part of RAM, the guest runs on while tracked, and closing the
// tracker leaves QEMU with no registration.
func TestTrackQEMUGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, pidfd_getfd)")
	}
	const mib = 256
	vm, _ := guest.ProtectedWith(t, mib, map[string]string{"dirty_mib": "64", "dirty_rate_kib": "512"},
		"-object", fmt.Sprintf("memory-backend-memfd,id=ram0,size=%dM,share=on", mib), "-machine", "memory-backend=ram0")
	s, err := qmp.Dial(context.Background(), vm.QMPSocket, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	maps, err := readMaps(vm.Pid)
	if err != nil {
		t.Fatal(err)
	}
	ram, err := MemfdRAM(maps, "memory-backend-memfd", mib<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest RAM: %+v", ram)
	start := time.Now()
	tr, err := Track(vm.Pid, ram)
	needKernel(t, err)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	t.Logf("Track took %v", time.Since(start))
	before := len(vm.Ticks())
	if _, err := vm.WaitTicks(before+5, time.Minute); err != nil {
		t.Fatalf("the guest stopped ticking once tracked: %v", err)
	}

	qmpDo(t, s, "stop")
	first, err := tr.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if n := Pages(first); n != mib<<20/pageSize {
		t.Fatalf("first scan: %d pages, want all %d", n, mib<<20/pageSize)
	}
	prev := readRAM(t, vm.Pid, ram)
	qmpDo(t, s, "cont")
	for round := 1; round <= 3; round++ {
		time.Sleep(time.Second)
		qmpDo(t, s, "stop")
		scanStart := time.Now()
		dirty, err := tr.Scan()
		scanTime := time.Since(scanStart)
		if err != nil {
			t.Fatal(err)
		}
		now := readRAM(t, vm.Pid, ram)
		qmpDo(t, s, "cont")
		reported := map[uint64]bool{}
		for _, r := range dirty {
			for a := r.Start; a < r.End; a += pageSize {
				reported[a/pageSize] = true
			}
		}
		var changed, missed int
		for p := uint64(0); p < uint64(len(now))/pageSize; p++ {
			if !bytes.Equal(prev[p*pageSize:(p+1)*pageSize], now[p*pageSize:(p+1)*pageSize]) {
				changed++
				if !reported[p] {
					missed++
				}
			}
		}
		t.Logf("round %d: %d pages changed, %d reported, %d changed but not reported; scan of %d MiB took %v",
			round, changed, len(reported), missed, mib, scanTime)
		if missed != 0 {
			t.Fatalf("round %d: %d changed pages not reported", round, missed)
		}
		if changed == 0 || len(reported) > mib<<20/pageSize/4 {
			t.Fatalf("round %d: %d changed, %d reported: not a dirty set", round, changed, len(reported))
		}
		prev = now
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	reg, prot := protection(t, vm.Pid, ram[0])
	if reg || prot != 0 {
		t.Fatalf("after Close: registered %v, %d pages write-protected", reg, prot)
	}
	before = len(vm.Ticks())
	if _, err := vm.WaitTicks(before+5, time.Minute); err != nil {
		t.Fatalf("the guest stopped ticking after Close: %v", err)
	}
}
