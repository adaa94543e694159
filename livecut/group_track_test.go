package livecut_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
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

// trackedMember is one guest of TestTrackedGroupCuts and what the test
// knows of its last planned cut.
type trackedMember struct {
	name       string
	vm         *guest.VM
	src        *livecut.Source
	prevTarget []byte           // the RAM target of the last planned cut, as the planner read it
	prevMem    []byte           // the guest's RAM at that cut's stop
	prevTable  *blockhash.Table // its table
}

// TestTrackedGroupCuts cuts two guests whose RAM is a shared memfd
// backend, with RAM tracking, as one group, driving the steps as the
// group's coordinator does (all prepare, all stop, all resume). The first
// group cut is full and arms the tracking; the next ones take the tracked
// path: device state only, the pages written since the last cut copied;
// members mix the paths when only one of them can be tracked. Each tracked member's RAM is the previous cut's with
// exactly the pages written since replaced by the guest's RAM at the stop
// (read from QEMU while both are held stopped), no page changed between
// the two stops without being reported, and both guests are stopped at
// one instant. A tracked group cut aborted after its stop loses nothing:
// the next one is still tracked and carries the aborted cut's written
// pages. A cut left unplanned makes the next one full, so the pause per
// VM of tracked and full-pass group cuts is printed from the same run,
// from rounds that do not read the guests' RAM.
func TestTrackedGroupCuts(t *testing.T) {
	if testing.Short() {
		t.Skip("boots two guests")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, pidfd_getfd)")
	}
	if err := dirtylog.CheckKernel(); err != nil {
		t.Skipf("this kernel cannot track: %v", err)
	}
	const mib = 128
	ctx := context.Background()
	var members []*trackedMember
	for _, name := range []string{"vm-a", "vm-b"} {
		t.Logf("booting %s", name)
		vm, dir := guest.ProtectedWith(t, mib, map[string]string{"rate": "50", "dirty_mib": "16", "dirty_rate_kib": "512"}, sharedRAMArgs(mib)...)
		// The live pass for full cuts, as under KVM: the full-pass group
		// cut compared is the held migration, not a TCG stopped pass.
		src, err := livecut.New(livecut.Options{
			QMPSocket: vm.QMPSocket, WorkDir: filepath.Join(dir, "work"), Now: time.Now, Pass: livecut.PassLive,
			Disks:     []livecut.Disk{{Name: "vda", Node: "disk0"}},
			SharedRAM: "ram0",
			TrackRAM:  func() (livecut.RAMTracker, error) { return dirtylog.TrackGuest(vm.Pid, mib<<20) },
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		members = append(members, &trackedMember{name: name, vm: vm, src: src})
	}
	// each runs f for every member at once and fails on the first error.
	each := func(step string, f func(i int, m *trackedMember) error) {
		t.Helper()
		errs := make([]error, len(members))
		var wg sync.WaitGroup
		for i, m := range members {
			wg.Go(func() { errs[i] = f(i, m) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("%s of %s: %v", step, members[i].name, err)
			}
		}
	}
	F, T := livecut.RAMFull, livecut.RAMTracked
	type round struct {
		want    [2]string // the RAM path each member takes
		abort   bool      // aborted after the stop
		planned [2]bool   // an unplanned cut makes the member's next one full
		check   bool      // the guests' RAM is read while they are held
	}
	both, first, second := [2]bool{true, true}, [2]bool{true, false}, [2]bool{false, true}
	rounds := []round{
		{[2]string{F, F}, false, both, true},
		{[2]string{T, T}, false, both, true},
		{[2]string{T, T}, true, both, false},
		{[2]string{T, T}, false, first, true},
		{[2]string{T, F}, false, both, true}, // the paths mixed
		{[2]string{T, T}, false, second, true},
		{[2]string{F, T}, false, both, true},
		// Pauses, without the test's reads of RAM.
		{[2]string{T, T}, false, both, false},
		{[2]string{T, T}, false, [2]bool{}, false},
		{[2]string{F, F}, false, both, false},
		{[2]string{T, T}, false, both, false},
		{[2]string{T, T}, false, [2]bool{}, false},
		{[2]string{F, F}, false, both, false},
		{[2]string{T, T}, false, both, false},
		{[2]string{T, T}, false, [2]bool{}, false},
		{[2]string{F, F}, false, both, false},
		{[2]string{T, T}, false, both, false},
	}
	pauses := map[string][]time.Duration{}
	for n, r := range rounds {
		n++
		steps := make([]*livecut.GroupCut, len(members))
		each("prepare", func(i int, m *trackedMember) error {
			g, err := m.src.PrepareGroupCut(ctx)
			if err != nil {
				return err
			}
			steps[i] = g
			if g.RAMPath() != r.want[i] {
				return fmt.Errorf("group cut %d takes the %s path, want %s", n, g.RAMPath(), r.want[i])
			}
			return nil
		})
		each("converge", func(i int, m *trackedMember) error { return steps[i].WaitConverged(ctx) })
		each("stop", func(i int, m *trackedMember) error {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			return steps[i].Stop(sctx)
		})
		if r.abort {
			each("abort", func(i int, m *trackedMember) error { return steps[i].Abort() })
			t.Logf("group cut %d: aborted after the stop", n)
			for _, m := range members {
				before := len(m.vm.Ticks())
				if _, err := m.vm.WaitTicks(before+2, time.Minute); err != nil {
					t.Fatalf("%s does not run after the aborted cut: %v", m.name, err)
				}
			}
			continue
		}
		// Both guests are held stopped: their RAM now is the cut's.
		atCut := make([][]byte, len(members))
		for i, m := range members {
			if !r.check {
				continue
			}
			b, err := guestRAMNow(m.vm.Pid, mib<<20)
			if err != nil {
				t.Fatal(err)
			}
			atCut[i] = b
		}
		snaps := make([]*sender.Snapshot, len(members))
		each("resume", func(i int, m *trackedMember) error {
			s, err := steps[i].Resume(ctx, &vmspec.GroupCut{Group: "pair", Cut: uint64(n), Members: []string{"vm-a", "vm-b"}})
			snaps[i] = s
			return err
		})
		var lastStop, firstResume time.Time
		for i, m := range members {
			snap, st := snaps[i], m.src.LastCut()
			if snap.Cut.After(lastStop) {
				lastStop = snap.Cut
			}
			if res := snap.Cut.Add(snap.Pause); firstResume.IsZero() || res.Before(firstResume) {
				firstResume = res
			}
			if st.RAMPath != r.want[i] {
				t.Fatalf("group cut %d of %s: stats say %s, want %s", n, m.name, st.RAMPath, r.want[i])
			}
			// Tracking needs write-protected userfaultfd, as background
			// snapshots do: every tracked member takes that way.
			if (st.RAMPath == livecut.RAMTracked) != st.Background {
				t.Errorf("group cut %d of %s: %s path, background %v; want tracked cuts and only they by background snapshot", n, m.name, st.RAMPath, st.Background)
			}
			how := "with the test's reads of RAM"
			if !r.check {
				how = "measured"
				pauses[st.RAMPath] = append(pauses[st.RAMPath], snap.Pause)
			}
			t.Logf("group cut %d of %s: %s, pass %s, disks' jobs %s, %d written pages (%d copied before the stop in %v), scan %v, pause %v (%s), stream %d bytes",
				n, m.name, st.RAMPath, st.Pass, st.DiskFreeze, st.DirtyPages, st.PrecopyPages, st.Precopy.Round(100*time.Microsecond), st.Scan.Round(100*time.Microsecond), snap.Pause.Round(100*time.Microsecond), how, st.StreamBytes)
			checkTrackedMember(t, n, m, snap, st, atCut[i])
			tables := diskTables(t, snap)
			if r.planned[i] {
				tables[sender.TableKey(vmspec.KindRAM, "ram0")] = m.prevTable
				snap.Planned(tables)
			}
			if err := snap.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if !lastStop.Before(firstResume) {
			t.Errorf("group cut %d: no instant with both guests stopped: last stop %s, first resume %s", n, lastStop.Format("15:04:05.000000"), firstResume.Format("15:04:05.000000"))
		}
		for _, m := range members {
			before := len(m.vm.Ticks())
			if _, err := m.vm.WaitTicks(before+2, time.Minute); err != nil {
				t.Fatalf("after group cut %d %s does not run: %v", n, m.name, err)
			}
		}
	}
	med := func(d []time.Duration) time.Duration { d = slices.Clone(d); slices.Sort(d); return d[len(d)/2] }
	tr, full := pauses[livecut.RAMTracked], pauses[livecut.RAMFull]
	t.Logf("pause per VM of a group cut: tracked median %v (max %v, %d), full pass median %v (max %v, %d)",
		med(tr).Round(100*time.Microsecond), slices.Max(tr).Round(100*time.Microsecond), len(tr),
		med(full).Round(100*time.Microsecond), slices.Max(full).Round(100*time.Microsecond), len(full))
}

// checkTrackedMember checks member m's group cut n against the guest's
// RAM at the stop (atCut, if read) and records what the planner would
// know of it.
func checkTrackedMember(t *testing.T, n int, m *trackedMember, snap *sender.Snapshot, st livecut.CutStats, atCut []byte) {
	t.Helper()
	sk, err := migstream.ParseSkeleton(snap.DeviceState)
	if err != nil {
		t.Fatal(err)
	}
	if sk.IgnoreShared() {
		t.Fatalf("group cut %d of %s: the device state kept x-ignore-shared", n, m.name)
	}
	var ram *sender.Target
	for i := range snap.Targets {
		if snap.Targets[i].Kind == vmspec.KindRAM && snap.Targets[i].Name == "ram0" {
			ram = &snap.Targets[i]
		}
	}
	if ram == nil {
		t.Fatalf("group cut %d of %s: no RAM target ram0", n, m.name)
	}
	var got []byte
	if st.RAMPath == livecut.RAMFull {
		got = readAll(t, *ram)
		if atCut != nil {
			t.Logf("group cut %d of %s (full): %d pages differ from the guest's RAM at the stop", n, m.name, differing(got, atCut))
		}
	} else {
		if st.Pass != livecut.PassStopped {
			t.Fatalf("group cut %d of %s: a tracked group cut took the %s pass; its guest stops before the migration", n, m.name, st.Pass)
		}
		if st.StreamBytes > 24<<20 {
			t.Fatalf("group cut %d of %s: a tracked cut's stream is %d bytes: it carried RAM", n, m.name, st.StreamBytes)
		}
		if ram.Prev == nil || ram.Extents == nil {
			t.Fatalf("group cut %d of %s: tracked RAM target without the previous table", n, m.name)
		}
		ext, err := ram.Extents(context.Background(), 0, ram.Size)
		if err != nil {
			t.Fatal(err)
		}
		got = bytes.Clone(m.prevTarget)
		var written, missed int
		for _, e := range ext {
			if !e.Unchanged {
				if _, err := ram.Reader.ReadAt(got[e.Off:e.Off+e.Len], e.Off); err != nil {
					t.Fatalf("group cut %d of %s: read written pages at %#x: %v", n, m.name, e.Off, err)
				}
			}
			for off := e.Off; atCut != nil && off < e.Off+e.Len; off += vmspec.PageSize {
				pg := func(b []byte) []byte { return b[off : off+vmspec.PageSize] }
				if !e.Unchanged {
					written++
					if !bytes.Equal(pg(got), pg(atCut)) {
						t.Fatalf("group cut %d of %s: written page %#x is not the guest's at the stop", n, m.name, off)
					}
					continue
				}
				if ram.Prev.Hashes[off/vmspec.PageSize] != m.prevTable.Hashes[off/vmspec.PageSize] {
					t.Fatalf("group cut %d of %s: unchanged page %#x is not the previous cut's", n, m.name, off)
				}
				if m.prevMem != nil && !bytes.Equal(pg(atCut), pg(m.prevMem)) {
					missed++
				}
			}
		}
		if atCut != nil {
			t.Logf("group cut %d of %s: %d pages written, %d changed since the last planned cut's stop without being reported; %d pages differ from the guest's RAM at the stop",
				n, m.name, written, missed, differing(got, atCut))
		}
		if missed != 0 {
			t.Fatalf("group cut %d of %s: %d pages changed without being reported", n, m.name, missed)
		}
	}
	m.prevTarget, m.prevMem, m.prevTable = got, atCut, blockhash.Of(got, vmspec.PageSize)
}
