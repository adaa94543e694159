package colo_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/drsync/drsync/migstream"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit/guest"
)

// guestRAM finds the mapping of the shared guest RAM backend in QEMU.
func guestRAM(t *testing.T, pid int, name string) (start, end uint64) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), "/memfd:") {
			continue
		}
		r, _, _ := strings.Cut(sc.Text(), " ")
		a, b, _ := strings.Cut(r, "-")
		s, _ := strconv.ParseUint(a, 16, 64)
		e, _ := strconv.ParseUint(b, 16, 64)
		if e-s > end-start {
			start, end = s, e
		}
	}
	if end == 0 {
		t.Fatalf("no memfd mapping in QEMU (backend %s)", name)
	}
	return start, end
}

// softDirty reads the soft-dirty bit (pagemap bit 55) of every page in
// [start, end) of pid.
func softDirty(t *testing.T, pid int, start, end uint64) []bool {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := (end - start) / 4096
	buf := make([]byte, n*8)
	if _, err := f.ReadAt(buf, int64(start/4096*8)); err != nil {
		t.Fatal(err)
	}
	d := make([]bool, n)
	for i := range d {
		d[i] = binary.LittleEndian.Uint64(buf[i*8:])&(1<<55) != 0
	}
	return d
}

func readMem(t *testing.T, pid int, start, end uint64) []byte {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, end-start)
	if _, err := f.ReadAt(b, int64(start)); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSoftDirtyTracksGuestWrites checks the mechanism the package
// documentation names as the best available on QEMU 7.2: with guest RAM in
// a shared memfd backend, every page the guest changed between two stops
// has its soft-dirty bit set in QEMU's mapping (so drsync could read only
// those), few pages are flagged, and a migration with x-ignore-shared
// carries no guest RAM.
func TestSoftDirtyTracksGuestWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	vm, dir := guest.ProtectedWith(t, 256, map[string]string{"dirty_mib": "64", "dirty_rate_kib": "256"},
		"-object", "memory-backend-memfd,id=ram0,size=256M,share=on", "-machine", "memory-backend=ram0")
	ctx := context.Background()
	s, err := qmp.Dial(ctx, vm.QMPSocket, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start, end := guestRAM(t, vm.Pid, "ram0")
	t.Logf("guest RAM mapped at %#x, %d MiB", start, (end-start)>>20)
	clear := func() {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", vm.Pid), []byte("4"), 0); err != nil {
			t.Fatal(err)
		}
	}
	qmpQuick(t, s, "x-ignore-shared", "migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
		{"capability": "x-ignore-shared", "state": true}}}, nil)
	sock := filepath.Join(dir, "mig.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	qmpQuick(t, s, "migrate", "migrate", map[string]any{"uri": "unix:" + sock}, nil)
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	res, err := migstream.Parse(conn, nil, migstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	qmpQuick(t, s, "cont", "cont", nil, nil)
	waitRunning(t, s, "after the x-ignore-shared migration")
	t.Logf("x-ignore-shared migration: %d bytes, %d pages, %d zero pages", res.Stats.StreamBytes, res.Stats.Pages, res.Stats.ZeroPages)
	if res.Stats.StreamBytes > 64<<20 {
		t.Fatalf("x-ignore-shared migration of %d bytes still carries guest RAM", res.Stats.StreamBytes)
	}
	if !kernelSoftDirty(t) {
		t.Skip("this kernel has no soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY)")
	}
	for round := 1; round <= 3; round++ {
		qmpQuick(t, s, "stop", "stop", nil, nil)
		clear()
		before := readMem(t, vm.Pid, start, end)
		qmpQuick(t, s, "cont", "cont", nil, nil)
		time.Sleep(time.Second)
		qmpQuick(t, s, "stop", "stop", nil, nil)
		scan := time.Now()
		dirty := softDirty(t, vm.Pid, start, end)
		scanTime := time.Since(scan)
		after := readMem(t, vm.Pid, start, end)
		qmpQuick(t, s, "cont", "cont", nil, nil)
		var changed, flagged, missed int
		for i := range dirty {
			if dirty[i] {
				flagged++
			}
			if !bytes.Equal(before[i*4096:(i+1)*4096], after[i*4096:(i+1)*4096]) {
				changed++
				if !dirty[i] {
					missed++
				}
			}
		}
		t.Logf("round %d: %d pages changed in 1 s, %d soft-dirty, %d changed but not flagged; pagemap scan %v",
			round, changed, flagged, missed, scanTime)
		if missed != 0 {
			t.Fatalf("round %d: %d changed pages without the soft-dirty bit", round, missed)
		}
		if changed == 0 || flagged > len(dirty)/4 {
			t.Fatalf("round %d: %d changed, %d flagged of %d: not a dirty set", round, changed, flagged, len(dirty))
		}
	}

}

// kernelSoftDirty says whether the kernel sets soft-dirty bits: it clears
// them for this process and writes to a fresh page of its own.
func kernelSoftDirty(t *testing.T) bool {
	t.Helper()
	page := make([]byte, 2*4096)
	p := uint64(uintptr(unsafe.Pointer(&page[0]))+4095) &^ 4095
	if err := os.WriteFile("/proc/self/clear_refs", []byte("4"), 0); err != nil {
		return false
	}
	page[p-uint64(uintptr(unsafe.Pointer(&page[0])))] = 1
	return softDirty(t, os.Getpid(), p, p+4096)[0]
}
