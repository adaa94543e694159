package livecut_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/wire"
)

// bootGuest starts the test guest with a raw disk (the workload's records)
// and a qcow2 disk.
func bootGuest(t *testing.T) (*guest.VM, string) {
	t.Helper()
	hosttools.Need(t, "qemu-system-x86_64", "qemu-img")
	guest.Build(t)
	dir := hosttools.ShortTempDir(t, "lc")
	raw := filepath.Join(dir, "vda.raw")
	qcow := filepath.Join(dir, "vdb.qcow2")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "raw", raw, "64M")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", qcow, "32M")
	vm := guest.Launch(t, guest.Options{MemMiB: 256, Disks: []guest.Disk{{Path: raw}, {Path: qcow}}, Args: map[string]string{"rate": "50"}})
	if _, err := vm.WaitTicks(10, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	return vm, dir
}

func readAll(t *testing.T, tg sender.Target) []byte {
	t.Helper()
	b := make([]byte, tg.Size)
	if _, err := tg.Reader.ReadAt(b, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return b
}

func tableOf(b []byte, bs int) *blockhash.Table {
	tb := blockhash.NewZero(int64(len(b)), bs)
	for i := range tb.Hashes {
		tb.Hashes[i] = blockhash.Hash(b[i*bs : min((i+1)*bs, len(b))])
	}
	return tb
}

// TestCutsOfARunningGuest cuts a live guest three times: every cut's disk
// view holds a consistent record ring and stays fixed while the guest
// writes on; RAM comes whole; the second and third cuts read only what the
// bitmap marks dirty, and that agrees with a full comparison.
func TestCutsOfARunningGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	vm, dir := bootGuest(t)
	work := filepath.Join(dir, "work")
	src, err := livecut.New(livecut.Options{
		QMPSocket: vm.QMPSocket, WorkDir: work, Now: time.Now,
		Disks:  []livecut.Disk{{Name: "vda", Node: "disk0"}, {Name: "vdb", Node: "disk1"}},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ctx := context.Background()
	var prevDisk []byte
	for n := 1; n <= 3; n++ {
		snap, err := src.Snapshot(ctx)
		if err != nil {
			t.Fatalf("cut %d: %v", n, err)
		}
		st := src.LastCut()
		t.Logf("cut %d: pause %v (QEMU downtime %v), capture %v, stream %d bytes, device state %d bytes", n, st.Pause, st.Downtime, st.Capture, st.StreamBytes, len(snap.DeviceState))
		if st.Pause <= 0 || st.Pause > 5*time.Second {
			t.Errorf("cut %d: pause %v", n, st.Pause)
		}
		var disk sender.Target
		var ram bool
		for _, tg := range snap.Targets {
			if tg.Kind == wire.KindDisk && tg.Name == "vda" {
				disk = tg
			}
			if tg.Kind == wire.KindRAM && tg.Name == "pc.ram" && tg.Size == 256<<20 {
				ram = true
			}
		}
		if !ram || disk.Reader == nil {
			t.Fatalf("cut %d: targets %v", n, snap.Targets)
		}
		a := readAll(t, disk)
		recs, err := guest.VerifyRecords(bytes.NewReader(a), int64(len(a)))
		if err != nil {
			t.Fatalf("cut %d: the disk view is not a consistent instant: %v", n, err)
		}
		time.Sleep(500 * time.Millisecond) // the guest writes on
		if b := readAll(t, disk); !bytes.Equal(a, b) {
			t.Fatalf("cut %d: the point-in-time view changed while the guest ran", n)
		}
		ext, err := disk.Extents(ctx, 0, disk.Size)
		if err != nil {
			t.Fatal(err)
		}
		var unchanged int64
		for _, e := range ext {
			if e.Unchanged {
				unchanged += e.Len
			}
		}
		t.Logf("cut %d: %d records (%d..%d), %d of %d bytes unchanged per the bitmap", n, recs.Count, recs.First, recs.Last, unchanged, disk.Size)
		if n == 1 && (disk.Prev != nil || unchanged != 0) {
			t.Errorf("first cut claims a previous cut")
		}
		if n > 1 {
			if disk.Prev == nil || unchanged == 0 {
				t.Fatalf("cut %d: no change tracking (prev %v, unchanged %d)", n, disk.Prev != nil, unchanged)
			}
			// Every block the bitmap calls unchanged is unchanged.
			for _, e := range ext {
				if e.Unchanged && !bytes.Equal(a[e.Off:e.Off+e.Len], prevDisk[e.Off:e.Off+e.Len]) {
					t.Fatalf("cut %d: bitmap says [%d,+%d) unchanged, but it changed", n, e.Off, e.Len)
				}
			}
		}
		tables := map[string]*blockhash.Table{}
		for _, tg := range snap.Targets {
			if tg.Kind == wire.KindDisk {
				tables[sender.TableKey(tg.Kind, tg.Name)] = tableOf(readAll(t, tg), tg.BlockSize)
			}
		}
		snap.Planned(tables)
		if err := snap.Close(); err != nil {
			t.Fatalf("cut %d: close: %v", n, err)
		}
		prevDisk = a
		time.Sleep(300 * time.Millisecond)
	}
	ticks := vm.Ticks()
	if gap := guest.MaxGap(ticks, ticks[0].At, time.Now()); gap > 3*time.Second {
		t.Errorf("the guest stalled for %v", gap)
	}
}
