package livecut_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/drsync/drsync/qmp"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/migstream"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/vmspec"
)

// sharedRAMArgs puts a guest's RAM in a shared memfd backend named ram0.
func sharedRAMArgs(mib int) []string {
	return []string{"-object", fmt.Sprintf("memory-backend-memfd,id=ram0,size=%dM,share=on", mib), "-machine", "memory-backend=ram0"}
}

// guestRAMNow reads the shared RAM backend of QEMU process pid.
func guestRAMNow(pid int, size uint64) ([]byte, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	maps, err := dirtylog.ParseMaps(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	regions, err := dirtylog.MemfdRAM(maps, dirtylog.MemfdBackendName, size)
	if err != nil {
		return nil, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, err
	}
	defer mem.Close()
	out := make([]byte, size)
	for _, r := range regions {
		if _, err := mem.ReadAt(out[r.Offset:r.Offset+r.End-r.Start], int64(r.Start)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// TestTrackedCuts cuts a live guest whose RAM is a shared memfd backend,
// with RAM tracking on: the first cut migrates all of RAM, the later ones
// only device state (x-ignore-shared) plus the written pages, and every
// tracked cut's RAM target is the previous cut's with exactly the pages
// written since replaced by the guest's RAM at the stop (read from QEMU
// then), and no page changed between the two stops without being
// reported. Every cut's disk view is the disk at the stop (its image
// file read then), whenever its backup jobs started: the third cut's
// early job is overtaken by a write through the guest's disk device just
// before the stop, so it takes the late path, and the fourth starts its
// jobs while stopped. The guest runs on throughout. It runs twice: over
// QMP, whose events come in order with replies (the early jobs' write
// threshold), and over a monitor that does not say so, as libvirt's
// (the jobs' progress asked while stopped).
func TestTrackedCuts(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, pidfd_getfd)")
	}
	t.Run("ordered", func(t *testing.T) { testTrackedCuts(t, livecut.DialQMP) })
	t.Run("unordered", func(t *testing.T) {
		testTrackedCuts(t, func(ctx context.Context, socket string, o qmp.Options) (livecut.Monitor, error) {
			m, err := livecut.DialQMP(ctx, socket, o)
			if err != nil {
				return nil, err
			}
			return unordered{m}, nil
		})
	})
}

// unordered hides a monitor's promise of events before later replies.
type unordered struct{ livecut.Monitor }

func testTrackedCuts(t *testing.T, dial livecut.DialFunc) {
	const mib = 256
	vm, dir := guest.ProtectedWith(t, mib, map[string]string{"rate": "50", "dirty_mib": "64", "dirty_rate_kib": "512"}, sharedRAMArgs(mib)...)
	var atCut, diskAtCut []byte
	var readErr, writeErr error
	// forced is the cut whose early jobs the test overtakes with a write:
	// the first from cut 3 on that starts them. The guest writes its disk
	// too, so any tracked cut may be overtaken by itself, and the backoff
	// then starts the next cuts' jobs while stopped.
	n, forced := 0, 0
	src, err := livecut.New(livecut.Options{
		QMPSocket: vm.QMPSocket, WorkDir: filepath.Join(dir, "work"), Now: time.Now, Dial: dial,
		Disks:     []livecut.Disk{{Name: "vda", Node: "disk0"}},
		SharedRAM: "ram0",
		TrackRAM: func() (livecut.RAMTracker, error) {
			return dirtylog.TrackGuest(vm.Pid, mib<<20)
		},
		// The guest is stopped here: what its RAM and disk hold is the cut's.
		AfterMigration: func() {
			if atCut, readErr = guestRAMNow(vm.Pid, mib<<20); readErr == nil {
				diskAtCut, readErr = os.ReadFile(filepath.Join(dir, "vda.raw"))
			}
		},
		BeforeStop: func(ctx context.Context, m livecut.Monitor) {
			if n < 3 || forced != 0 {
				return
			}
			var jobs []struct{}
			if writeErr = m.Execute(ctx, "query-block-jobs", nil, &jobs); writeErr != nil || len(jobs) == 0 {
				return // no early jobs to overtake in this cut
			}
			forced = n
			writeErr = writeThroughDevice(ctx, m, "vda.raw", 64<<20-4096, 0x5a)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ctx := context.Background()
	var prev *blockhash.Table
	var prevTarget, prevMem []byte
	// Five cuts, and on until a forced cut and the one after it are seen.
	for n = 1; n <= 5 || (forced == 0 || n <= forced+1) && n <= 12; n++ {
		snap, err := src.Snapshot(ctx)
		if err != nil {
			t.Fatalf("cut %d: %v", n, err)
		}
		if readErr != nil || writeErr != nil {
			t.Fatal(readErr, writeErr)
		}
		st := src.LastCut()
		t.Logf("cut %d: %s, background %v, disks' jobs %s, %d dirty pages, scan %v, pause %v (with the test's reads of all RAM and the disk), capture %v, stream %d bytes",
			n, st.RAMPath, st.Background, st.DiskFreeze, st.DirtyPages, st.Scan, st.Pause, st.Capture, st.StreamBytes)
		switch {
		case n == forced && st.DiskFreeze != livecut.FreezeLate:
			t.Fatalf("cut %d: disks' jobs %s after a write overtook the early ones, want %s", n, st.DiskFreeze, livecut.FreezeLate)
		case forced > 0 && n == forced+1 && st.DiskFreeze != livecut.FreezeStopped:
			t.Fatalf("cut %d: disks' jobs %s right after an overtaken cut, want %s", n, st.DiskFreeze, livecut.FreezeStopped)
		case n == 2 && st.DiskFreeze == livecut.FreezeStopped:
			// The first tracked cut follows a full one: no backoff yet.
			t.Fatalf("cut %d: disks' jobs %s, want them started before the stop", n, st.DiskFreeze)
		}
		for _, tg := range snap.Targets {
			if tg.Kind == vmspec.KindDisk {
				if d := differing(readAll(t, tg), diskAtCut); d != 0 {
					t.Fatalf("cut %d: %d pages of the disk view differ from the disk at the stop", n, d)
				}
			}
		}
		if n == forced {
			if b := readAll(t, diskTarget(t, snap, "vda")); b[len(b)-1] != 0x5a {
				t.Fatalf("cut %d: the write just before the stop is not in the cut's disk view", n)
			}
		}
		want := livecut.RAMFull
		if n > 1 {
			want = livecut.RAMTracked
		}
		if st.RAMPath != want {
			t.Fatalf("cut %d took the %s path, want %s", n, st.RAMPath, want)
		}
		// Under TCG before QEMU 9.0 a full cut stops the guest before its
		// migration; a tracked one, whose stream has no guest RAM, need not,
		// and on this QEMU takes its device state by a background snapshot.
		if n > 1 && !st.Background {
			t.Fatalf("cut %d: a tracked cut took its device state by a migration (%s pass), want a background snapshot", n, st.Pass)
		}
		sk, err := migstream.ParseSkeleton(snap.DeviceState)
		if err != nil {
			t.Fatal(err)
		}
		if sk.IgnoreShared() {
			t.Fatalf("cut %d: the device state kept x-ignore-shared; a takeover could not load it", n)
		}
		if n > 1 && st.StreamBytes > 16<<20 {
			t.Fatalf("cut %d: a tracked cut's stream is %d bytes: it carried RAM", n, st.StreamBytes)
		}
		var ram *sender.Target
		for i := range snap.Targets {
			if snap.Targets[i].Kind == vmspec.KindRAM && snap.Targets[i].Name == "ram0" {
				ram = &snap.Targets[i]
			}
		}
		if ram == nil {
			t.Fatalf("cut %d: no RAM target ram0", n)
		}
		var got []byte
		written := int64(-1) // a written page's offset, on a tracked cut
		if n == 1 {
			got = readAll(t, *ram)
			// The full path's figure, for the record: the first migration
			// of a QEMU process has been seen to differ from the guest's
			// RAM at the stop in a few dozen pages (also without tracking).
			t.Logf("cut 1 (full): %d pages differ from the guest's RAM at the stop", differing(got, atCut))
		} else {
			if ram.Prev == nil || ram.Extents == nil {
				t.Fatalf("cut %d: tracked RAM target without the previous table", n)
			}
			ext, err := ram.Extents(ctx, 0, ram.Size)
			if err != nil {
				t.Fatal(err)
			}
			// The sender holds the written pages only: the others are the
			// previous cut's, known by their hashes.
			got = bytes.Clone(prevTarget)
			heldUnchanged := 0
			for _, e := range ext {
				if !e.Unchanged {
					written = e.Off
					if _, err := ram.Reader.ReadAt(got[e.Off:e.Off+e.Len], e.Off); err != nil {
						t.Fatalf("cut %d: read written pages at %#x: %v", n, e.Off, err)
					}
				} else if _, err := ram.Reader.ReadAt(make([]byte, vmspec.PageSize), e.Off); err == nil {
					heldUnchanged++
				}
			}
			if heldUnchanged > 0 {
				t.Fatalf("cut %d: the RAM target reads %d unchanged ranges: the sender holds more than the written pages", n, heldUnchanged)
			}
			// Written pages are the guest's at this stop; every other page
			// is the previous cut's and did not change between the stops.
			var written, missed int
			for _, e := range ext {
				for off := e.Off; off < e.Off+e.Len; off += vmspec.PageSize {
					pg := func(b []byte) []byte { return b[off : off+vmspec.PageSize] }
					if !e.Unchanged {
						written++
						if !bytes.Equal(pg(got), pg(atCut)) {
							t.Fatalf("cut %d: written page %#x is not the guest's at the stop", n, off)
						}
						continue
					}
					if ram.Prev.Hashes[off/vmspec.PageSize] != prev.Hashes[off/vmspec.PageSize] {
						t.Fatalf("cut %d: unchanged page %#x is not the previous cut's", n, off)
					}
					if !bytes.Equal(pg(atCut), pg(prevMem)) {
						missed++
					}
				}
			}
			t.Logf("cut %d: %d pages written, %d changed between the stops without being reported", n, written, missed)
			if missed != 0 {
				t.Fatalf("cut %d: %d pages changed between the stops without being reported", n, missed)
			}
		}
		prevTarget, prevMem = got, atCut
		table := blockhash.Of(got, vmspec.PageSize)
		tables := diskTables(t, snap)
		tables[sender.TableKey(vmspec.KindRAM, "ram0")] = table
		snap.Planned(tables)
		if err := snap.Close(); err != nil {
			t.Fatal(err)
		}
		// The sender holds the epoch's plan, and this reader with it, until
		// the epoch's result is out: the cut's close must let the copied
		// pages go, or the collection it may run counts them live.
		if written >= 0 {
			if _, err := ram.Reader.ReadAt(make([]byte, vmspec.PageSize), written); err == nil {
				t.Fatalf("cut %d: its copied pages are still held after its close", n)
			}
		}
		prev = table
		before := len(vm.Ticks())
		if _, err := vm.WaitTicks(before+3, time.Minute); err != nil {
			t.Fatalf("after cut %d the guest does not tick: %v", n, err)
		}
	}
	if forced == 0 || n < forced+2 {
		t.Fatalf("in %d cuts, the late path was forced at cut %d (0: none started its disks' jobs early from cut 3 on) and the cut after it not seen", n-1, forced)
	}
}

func differing(a, b []byte) int {
	n := 0
	for p := 0; p < len(a); p += vmspec.PageSize {
		if !bytes.Equal(a[p:p+vmspec.PageSize], b[p:p+vmspec.PageSize]) {
			n++
		}
	}
	return n
}

// An operator's own migration of a tracked guest: while it runs no cut
// starts (ErrMigrating) and nothing of drsync's is set on it (the guest's
// RAM travels in it: x-ignore-shared is off between cuts); once it ends
// (cancelled here), the next cut is tracked again.
func TestOperatorMigrationOfTrackedGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, pidfd_getfd)")
	}
	const mib = 128
	opSock := filepath.Join(t.TempDir(), "op.qmp")
	vm, dir := guest.ProtectedWith(t, mib, map[string]string{"rate": "50", "dirty_mib": "8", "dirty_rate_kib": "256"},
		append(sharedRAMArgs(mib), "-qmp", "unix:"+opSock+",server=on,wait=off")...)
	src, err := livecut.New(livecut.Options{
		QMPSocket: vm.QMPSocket, WorkDir: filepath.Join(dir, "work"), Now: time.Now,
		Disks:     []livecut.Disk{{Name: "vda", Node: "disk0"}},
		SharedRAM: "ram0",
		TrackRAM:  func() (livecut.RAMTracker, error) { return dirtylog.TrackGuest(vm.Pid, mib<<20) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ctx := context.Background()
	var prevRAM *blockhash.Table
	cut := func(n int) (livecut.CutStats, error) {
		snap, err := src.Snapshot(ctx)
		if err != nil {
			return livecut.CutStats{}, err
		}
		var ram sender.Target
		for _, tg := range snap.Targets {
			if tg.Kind == vmspec.KindRAM && tg.Name == "ram0" {
				ram = tg
			}
		}
		tables := diskTables(t, snap)
		if st := src.LastCut(); st.RAMPath == livecut.RAMFull {
			tables[sender.TableKey(vmspec.KindRAM, "ram0")] = blockhash.Of(readAll(t, ram), vmspec.PageSize)
		} else {
			// The tracked target's table: the previous one with the
			// written pages hashed, as the planner makes it.
			tab := prevRAM.Clone()
			ext, _ := ram.Extents(ctx, 0, ram.Size)
			for _, e := range ext {
				if e.Unchanged {
					continue
				}
				b := make([]byte, e.Len)
				if _, err := ram.Reader.ReadAt(b, e.Off); err != nil {
					t.Fatal(err)
				}
				for off := int64(0); off < e.Len; off += vmspec.PageSize {
					tab.Hashes[(e.Off+off)/vmspec.PageSize] = blockhash.Hash(b[off : off+vmspec.PageSize])
				}
			}
			tables[sender.TableKey(vmspec.KindRAM, "ram0")] = tab
		}
		prevRAM = tables[sender.TableKey(vmspec.KindRAM, "ram0")]
		snap.Planned(tables)
		st := src.LastCut()
		t.Logf("cut %d: %s", n, st.RAMPath)
		return st, snap.Close()
	}
	if _, err := cut(1); err != nil {
		t.Fatal(err)
	}
	if st, err := cut(2); err != nil || st.RAMPath != livecut.RAMTracked {
		t.Fatalf("cut 2: %v, path %q", err, st.RAMPath)
	}

	op, err := qmp.Dial(ctx, opSock, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	// Slow enough to be still running when the next cut comes.
	if err := op.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": 1 << 20}, nil); err != nil {
		t.Fatal(err)
	}
	if err := op.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > /dev/null"}, nil); err != nil {
		t.Fatal(err)
	}
	var mig struct {
		Status string
		RAM    struct {
			Total int64 `json:"total"`
		} `json:"ram"`
	}
	for deadline := time.Now().Add(30 * time.Second); mig.Status != "active"; time.Sleep(20 * time.Millisecond) {
		if err := op.Execute(ctx, "query-migrate", nil, &mig); err != nil || time.Now().After(deadline) {
			t.Fatalf("operator's migration: %v, status %q", err, mig.Status)
		}
	}
	if mig.RAM.Total < mib<<20 {
		t.Fatalf("the operator's migration carries %d bytes of RAM, not the guest's %d: x-ignore-shared was left on", mig.RAM.Total, mib<<20)
	}
	for range 2 {
		if _, err := cut(3); !errors.Is(err, livecut.ErrMigrating) {
			t.Fatalf("cut during the operator's migration: %v, want ErrMigrating", err)
		} else {
			t.Logf("cut during the operator's migration: %v", err)
		}
	}
	var params struct {
		MaxBandwidth int64 `json:"max-bandwidth"`
	}
	if err := op.Execute(ctx, "query-migrate-parameters", nil, &params); err != nil || params.MaxBandwidth != 1<<20 {
		t.Fatalf("the operator's migration parameters changed: max-bandwidth %d (%v)", params.MaxBandwidth, err)
	}
	if err := op.Execute(ctx, "migrate_cancel", nil, nil); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); mig.Status != "cancelled"; time.Sleep(20 * time.Millisecond) {
		if err := op.Execute(ctx, "query-migrate", nil, &mig); err != nil || time.Now().After(deadline) {
			t.Fatalf("operator's migration cancel: %v, status %q", err, mig.Status)
		}
	}
	st, err := cut(4)
	if err != nil {
		t.Fatalf("cut after the operator's migration ended: %v", err)
	}
	if st.RAMPath != livecut.RAMTracked {
		t.Fatalf("cut after the operator's migration took the %s path, want tracked", st.RAMPath)
	}
}

// writeThroughDevice writes a page of pattern at off through the guest's
// device of the disk whose image file ends in file, as the guest would
// (above any filter a backup job put over the disk's node): qemu-io on
// the device's block backend, by HMP.
func writeThroughDevice(ctx context.Context, m livecut.Monitor, file string, off int64, pattern byte) error {
	var devs []struct {
		Qdev     string `json:"qdev"`
		Inserted struct {
			File string `json:"file"`
		} `json:"inserted"`
	}
	if err := m.Execute(ctx, "query-block", nil, &devs); err != nil {
		return err
	}
	for _, d := range devs {
		if strings.HasSuffix(d.Inserted.File, file) {
			var out string
			cmd := fmt.Sprintf(`qemu-io -d %s "write -P %#x %d 4096"`, d.Qdev, pattern, off)
			if err := m.Execute(ctx, "human-monitor-command", map[string]any{"command-line": cmd}, &out); err != nil {
				return err
			}
			if out != "" {
				return fmt.Errorf("%s: %s", cmd, out)
			}
			return nil
		}
	}
	return fmt.Errorf("no device of %s in %+v", file, devs)
}

func diskTarget(t *testing.T, snap *sender.Snapshot, name string) sender.Target {
	t.Helper()
	for _, tg := range snap.Targets {
		if tg.Kind == vmspec.KindDisk && tg.Name == name {
			return tg
		}
	}
	t.Fatalf("no disk target %s", name)
	return sender.Target{}
}
