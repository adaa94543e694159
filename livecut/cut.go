package livecut

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"slices"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/diskmirror"
	"github.com/drsync/drsync/migstream"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
)

// cut is one open snapshot: what exists in QEMU and on disk for it.
type cut struct {
	s       *Source
	gen     uint64
	prev    *cutIndex // the chain this cut continues; nil: full pass
	nodes   []string  // fleecing nodes added
	jobs    []string  // backup jobs started
	exports []string  // exports added
	files   []string  // overlay files created
	bitmap  bool      // b<gen> was added
	frozen  bool      // b<prev> was disabled: the chain goes on from b<gen> or ends
	images  []*diskmirror.NBDImage
	cap     *capture // the migration stream's capture; the cut closes its image
	planned *cutIndex
	closed  bool
	// fullSlot says this cut holds the process's full-cut slot
	// (fullCutSlot), given back when its spooled RAM is closed.
	fullSlot bool

	// The tracked RAM path (ramtrack.go): tracked says this cut migrated
	// device state only and dirty holds the ranges written since ramPrev,
	// the cut whose image it updated; ramTable is the planner's table of
	// the tracked block once known.
	tracked  bool
	dirty    []dirtylog.Range
	ramPrev  uint64
	ramTable *blockhash.Table
	scanTime time.Duration
	scanErr  error // a failed arming scan of a full group cut, handled after its cont
	// pre holds the pages a tracked cut copied while its guest still
	// ran (precopy): the stopped window copies only those written since.
	pre          *writtenPages
	precopyTime  time.Duration
	precopyPages int
	// The freeze's QMP steps (CutStats.Fleece, Transaction).
	fleeceTime, txTime time.Duration
	// background: the device state is saved by a background snapshot
	// (background.go), the guest stopped by the cut itself beforehand.
	background bool
	// early: the backup jobs start before the stop (early.go), thr
	// holding the fleecing nodes' write thresholds; late: a write
	// overtook them and the cut's views are the late nodes. spare are
	// nodes torn down with the cut that are not its views, lateFiles the
	// late nodes' overlays.
	early, late bool
	thr         qmp.Events
	spare       []string
	lateFiles   []string
}

// CutStats describes the capture of one cut.
type CutStats struct {
	Pause, Downtime time.Duration
	Capture         time.Duration // migrate issued → stream parsed
	// Freeze is the part of Pause after QEMU reported the migration
	// complete: fleecing nodes, the transaction and cont.
	Freeze time.Duration
	// Fleece, Transaction and Cont split Freeze by QMP step: the fleecing
	// nodes' blockdev-adds, the cut transaction (bitmaps and backup
	// jobs) and cont, which after a migration also reactivates the disks.
	Fleece, Transaction, Cont time.Duration
	StreamBytes               int64
	// RAMPath says how the guest's RAM was captured: RAMFull (in the
	// migration stream) or RAMTracked (device state only, and the
	// DirtyPages written since the last cut copied in Scan).
	RAMPath    string
	DirtyPages int
	// Pass is how the migration ran: PassStopped (the guest stopped
	// before it) or PassLive.
	Pass Pass
	// Background: the device state came from a background snapshot
	// (background.go). The guest stopped for the RAM scan, the disks'
	// transaction and QEMU's device save, with no disk inactivated:
	// Fleece ran before the stop, Freeze is the scan and transaction,
	// Cont is from migrate to QEMU's RESUME.
	Background bool
	// DiskFreeze says when the backup jobs of the cut's disk views
	// started (early.go): FreezeStopped, FreezeEarly (before the stop:
	// Transaction was not part of the pause) or FreezeLate (overtaken by
	// a write: Fleece and Transaction are the late nodes' and jobs', in
	// the pause).
	DiskFreeze string
	Scan       time.Duration // scan and copy of written pages, guest stopped
	// Precopy is the scan and copy of written pages while the guest
	// still ran, PrecopyPages how many it copied: the stopped window
	// copies only the pages written after it.
	Precopy      time.Duration
	PrecopyPages int
	// NBDSocket and Exports (one per disk, in order) name the point-in-time
	// views while the cut is open, for tools that want to read them too.
	NBDSocket string
	Exports   []string
}

// LastCut reports the most recent cut's figures.
func (s *Source) LastCut() CutStats { return s.lastStats }

// Snapshot cuts the guest's memory and disks at one instant.
func (s *Source) Snapshot(ctx context.Context) (*sender.Snapshot, error) {
	if s.open != nil {
		return nil, errors.New("livecut: the previous snapshot is still open; QEMU allows one cut in flight")
	}
	sess, err := s.session(ctx)
	if err != nil {
		return nil, err
	}
	snap, err := s.snapshot(ctx, sess)
	if err != nil && sess.Err() != nil {
		err = fmt.Errorf("%w (%w)", err, ErrVMGone)
	}
	return snap, err
}

func (s *Source) snapshot(ctx context.Context, sess Monitor) (snap *sender.Snapshot, err error) {
	c := &cut{s: s, gen: s.nextGen(), prev: s.last}
	defer func() {
		if err != nil {
			c.unscan()
			if cerr := c.close(); cerr != nil {
				s.log.Warn("tearing down a failed cut", "err", cerr)
			}
			if s.backgroundOn && sess.Err() == nil {
				// Left on, an operator's migration would be a snapshot.
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				if rerr := s.resetCaptureCaps(rctx, sess); rerr != nil {
					s.log.Warn("could not turn background-snapshot off after a failed cut", "err", rerr)
				}
			}
		}
	}()
	s.open = c
	c.tracked = s.trackedCut()
	if !c.tracked && s.o.TrackRAM != nil {
		// Waited for before anything is checked or created: the wait
		// may last another VM's whole first epoch.
		if err := acquireFullCut(ctx); err != nil {
			return nil, fmt.Errorf("livecut: waiting for another VM's full cut to finish: %w", err)
		}
		c.fullSlot = true
	}
	if err := s.checkRunning(ctx, sess); err != nil {
		return nil, err
	}
	sizes, err := c.prepareDisks(ctx, sess)
	if err != nil {
		return nil, err
	}
	// A full cut migrates all of RAM, a tracked one leaves the shared
	// backend out, and takes its device state by a background snapshot
	// where QEMU allows (not a final cut's: QEMU resumes the guest).
	if c.background, err = s.setCaptureCaps(ctx, sess, c.tracked, c.tracked && !s.o.Final); err != nil {
		return nil, fmt.Errorf("livecut: %w", err)
	}
	if c.background {
		// No migration inactivates the disks on this path, so the
		// fleecing nodes and the new bitmaps are added while the guest
		// runs (background.go).
		if err := c.prepareBackground(ctx, sess); err != nil {
			return nil, fmt.Errorf("livecut: %w", err)
		}
	}
	if err := c.precopy(); err != nil {
		return nil, err
	}

	cctx, cancel := context.WithTimeout(ctx, s.o.CutTimeout)
	defer cancel()
	cap, err := c.startCapture()
	if err != nil {
		return nil, fmt.Errorf("livecut: %w", err)
	}
	if s.o.Final {
		// Marked before the cut: a sender killed from here on must not
		// resume the guest.
		mark := fmt.Sprintf("final cut %d at %s\n", c.gen, s.o.Now().UTC().Format(time.RFC3339))
		if err := vfs.WriteFileAtomic(s.o.FS, path.Join(s.o.WorkDir, finalFile), []byte(mark), 0o600); err != nil {
			cap.abort()
			return nil, fmt.Errorf("livecut: %w", err)
		}
	}
	// A tracked cut's migration leaves the shared RAM out, so the live
	// pass's missed writes (NeedsStoppedPass) cannot reach it: its guest
	// stops only for the device state, unless stopped passes were asked
	// for. The small blocks outside the backend (ROMs, device memory)
	// still go through QEMU's dirty log.
	stoppedPass := s.stoppedPass && !(c.tracked && s.o.Pass == PassAuto)
	// From here until the guest runs again, a sender that dies leaves the
	// mark, and its guard (or the next sender) resumes the guest.
	if err := s.markCutStopped(c.gen, stoppedPass || c.background); err != nil {
		cap.abort()
		return nil, fmt.Errorf("livecut: %w", err)
	}
	marked := true
	defer func() {
		// With the connection lost, QEMU may still run (or complete) the
		// cut's migration: the mark stays, so the next session cancels it
		// as this cut's, or resumes the guest it stopped, rather than
		// taking it for someone else's.
		if marked && sess.Err() == nil {
			s.unmarkCut()
		}
	}()
	// Set for every cut: the downtime limit decides when QEMU completes,
	// and a group cut of this VM lowers it while it holds the migration.
	if err := sess.Execute(cctx, "migrate-set-parameters", s.migrationParams(), nil); err != nil {
		cap.abort()
		return nil, fmt.Errorf("livecut: %w", err)
	}
	sub := sess.Subscribe("STOP", "RESUME", "MIGRATION", "SHUTDOWN")
	defer sub.Close()
	if c.background {
		snap, err := c.backgroundCut(ctx, cctx, sess, sub, cap, sizes, &marked)
		if err != nil {
			return nil, err
		}
		s.warnLongPause()
		return snap, nil
	}
	t := cutTimes{migStart: time.Now(), pass: PassLive}
	if stoppedPass {
		t.pass = PassStopped
	}
	// A stopped pass: the guest stops first, so no write can slip past
	// the migration's dirty logging (NeedsStoppedPass). Until the cut's
	// cont, a failure must resume it.
	weStopped := false
	defer func() {
		if weStopped {
			if err := sess.Execute(context.WithoutCancel(ctx), "cont", nil, nil); err != nil {
				// The mark stays: the guard, or the next cut, resumes it.
				s.log.Error("could not resume the guest after a failed cut", "err", err)
				marked = false
			}
		}
	}()
	if stoppedPass {
		if err := sess.Execute(cctx, "stop", nil, nil); err != nil {
			cap.abort()
			return nil, fmt.Errorf("livecut: stop the guest for the cut: %w", err)
		}
		weStopped = true
	}
	if err := sess.Execute(cctx, "migrate", map[string]any{"uri": "unix:" + cap.path}, nil); err != nil {
		cap.abort()
		return nil, fmt.Errorf("livecut: %w", err)
	}
	if t.completed, err = s.awaitMigration(ctx, cctx, sess, sub, &t.stopAt); err != nil {
		cap.abort()
		return nil, err
	}
	// The guest is stopped. Whatever happens now, it must run again, but
	// for a final cut.
	weStopped = false
	scanErr, frozenErr := c.whileStopped(cctx, sess)
	var contErr error
	t.cont = time.Now()
	if !s.o.Final {
		contErr = sess.Execute(context.WithoutCancel(cctx), "cont", nil, nil)
	}
	t.resumed = time.Now()
	if contErr == nil {
		s.unmarkCut()
	}
	// A failed cont leaves the mark: the next cut, or the guard once this
	// sender is gone, resumes the guest.
	marked = false
	if contErr != nil {
		s.log.Error("could not resume the guest after the cut", "err", contErr)
		cap.abort()
		return nil, fmt.Errorf("livecut: resume the guest: %w", contErr)
	}
	if err := c.afterResume(ctx, sess, scanErr); err != nil {
		cap.abort()
		return nil, err
	}
	if frozenErr != nil {
		cap.abort()
		return nil, fmt.Errorf("livecut: %w: %w", frozenErr, ErrCutFailed)
	}
	snap, err = c.settle(ctx, cctx, sess, cap, sizes, t, nil)
	if err != nil {
		return nil, err
	}
	s.warnLongPause()
	return snap, nil
}

// warnLongPause reports loudly a cut (not a final one, which pauses for
// good) whose guest stayed paused beyond PauseAlarm.
func (s *Source) warnLongPause() {
	if st := s.lastStats; st.Pause > PauseAlarm && !s.o.Final {
		s.log.Warn("the guest was paused for longer than expected by the cut", "pause", st.Pause.Round(time.Millisecond), "freeze", st.Freeze.Round(time.Millisecond), "expected_below", PauseAlarm)
	}
}

// prepareDisks finds the sizes of the cut's disks and makes their
// overlays, before the guest stops: their cost is not downtime. A disk
// the previous cut did not have starts its chain anew.
func (c *cut) prepareDisks(ctx context.Context, sess Monitor) ([]int64, error) {
	s := c.s
	nodes, err := s.nodes(ctx, sess)
	if err != nil {
		return nil, fmt.Errorf("livecut: %w", err)
	}
	sizes := make([]int64, len(s.o.Disks))
	for i, d := range s.o.Disks {
		found := false
		for _, n := range nodes {
			if n.NodeName == d.Node {
				sizes[i], found = n.Image.VirtualSize, true
			}
		}
		if !found {
			return nil, fmt.Errorf("livecut: disk %q: node %q is gone from the VM: %w", d.Name, d.Node, ErrDiskNotFound)
		}
		if sizes[i] <= 0 {
			return nil, fmt.Errorf("livecut: disk %q: node %q reports size %d", d.Name, d.Node, sizes[i])
		}
		if c.prev != nil && c.prev.tables[sender.TableKey(vmspec.KindDisk, d.Name)] == nil {
			c.prev = nil // a disk the last cut did not have: no chain for it
		}
	}
	for i := range s.o.Disks {
		f := filepath.Join(s.o.WorkDir, overlayFile(c.gen, i))
		if err := s.createOverlay(ctx, f, sizes[i]); err != nil {
			return nil, fmt.Errorf("livecut: %w", err)
		}
		c.files = append(c.files, f)
	}
	return sizes, nil
}

// cutTimes are the instants of one cut's capture.
type cutTimes struct {
	migStart  time.Time // migrate issued
	stopAt    time.Time // the guest stopped (STOP); zero if not seen
	completed time.Time // QEMU reported the migration complete
	cont      time.Time // cont sent
	resumed   time.Time // cont answered
	pass      Pass
}

// awaitMigration waits on sub (within cctx) for the cut's migration to
// complete, the guest stopped; a STOP on the way sets *stopAt. A wait
// that ends otherwise cancels the migration, and a failed migration is
// explained with QEMU's reason (asked within ctx).
//
// The STOP may also come after the completion: QEMU's stop marks the
// guest paused, then lets go of its big lock while the vCPUs stop, and a
// migration completing in that gap (a group cut's, released just before
// its stop) finds the guest paused already and completes without
// stopping it; the stop sends its STOP only then. Without it the cut
// would have no instant.
func (s *Source) awaitMigration(ctx, cctx context.Context, sess Monitor, sub qmp.Events, stopAt *time.Time) (time.Time, error) {
	for {
		e, err := sub.Next(cctx)
		if err != nil {
			s.cancelMigration(sess)
			return time.Time{}, fmt.Errorf("livecut: waiting for the migration to complete: %w", err)
		}
		if e.Name == "SHUTDOWN" {
			return time.Time{}, fmt.Errorf("livecut: the VM shut down (%s) during the cut: %w", e.Str("reason"), ErrVMGone)
		}
		if e.Name == "STOP" {
			*stopAt = e.At
			continue
		}
		st := e.Str("status")
		if st == "completed" {
			at := time.Now()
			if stopAt.IsZero() {
				awaitLateStop(cctx, sub, stopAt)
			}
			if s.o.AfterMigration != nil {
				s.o.AfterMigration()
			}
			return at, nil
		}
		if st == "failed" || st == "cancelled" {
			return time.Time{}, s.migrationFailed(ctx, sess, st)
		}
	}
}

// awaitLateStop takes the STOP that follows a migration's completion
// (awaitMigration), waiting at most ownStopWait: QEMU sends it before the
// reply to the stop that caused it. With none, *stopAt stays zero (the
// snapshot's instant is then taken when it is made).
func awaitLateStop(cctx context.Context, sub qmp.Events, stopAt *time.Time) {
	ctx, cancel := context.WithTimeout(cctx, ownStopWait)
	defer cancel()
	if e, err := sub.Wait(ctx, func(e qmp.Event) bool { return e.Name == "STOP" }); err == nil {
		*stopAt = e.At
	}
}

// migrationFailed explains a cut's migration that ended in status st
// (failed, cancelled) with QEMU's reason, asked within ctx.
func (s *Source) migrationFailed(ctx context.Context, sess Monitor, st string) error {
	var mig struct {
		ErrorDesc string `json:"error-desc"`
	}
	sess.Execute(ctx, "query-migrate", nil, &mig)
	desc := mig.ErrorDesc
	if desc == "" {
		desc = "QEMU gave no reason (a block job still holding the disks makes completion fail)"
	}
	return fmt.Errorf("livecut: migration %s: %s: %w", st, desc, ErrCutFailed)
}

// whileStopped is a cut's work with its guest stopped and its migration
// complete: the RAM scan (on a full cut it arms the tracking, on a
// tracked one it copies the pages written since the last cut) and the
// disks' freeze, both at the cut's instant. A failed scan is returned
// apart: it fails a tracked cut only.
func (c *cut) whileStopped(ctx context.Context, sess Monitor) (scanErr, frozenErr error) {
	c.ramPrev = c.s.ramGen()
	c.dirty, c.scanTime, scanErr = c.s.scanStopped(c.tracked, c.gen, c.pre)
	c.pre = nil
	return scanErr, c.freeze(ctx, sess)
}

// afterResume follows a cut's cont: x-ignore-shared goes off again after
// a tracked cut (left on, it would make an operator's own migration leave
// the guest's RAM behind), and a failed scan ends the tracking, failing a
// tracked cut.
func (c *cut) afterResume(ctx context.Context, sess Monitor, scanErr error) error {
	s := c.s
	if c.tracked {
		if err := s.resetCaptureCaps(ctx, sess); err != nil {
			s.log.Warn("could not turn x-ignore-shared off after a tracked cut", "err", err)
		}
	}
	if scanErr != nil {
		s.dropTracking(scanErr)
		if c.tracked {
			return fmt.Errorf("livecut: %w: %w", scanErr, ErrCutFailed)
		}
	}
	return nil
}

// settle completes a cut whose guest runs again: QEMU's downtime, the
// parsed stream (waited for within cctx), the tracking chain a full cut
// starts, the figures, and the snapshot with its targets, tagged with
// group when a consistency group's.
func (c *cut) settle(ctx, cctx context.Context, sess Monitor, cap *capture, sizes []int64, t cutTimes, group *vmspec.GroupCut) (*sender.Snapshot, error) {
	s := c.s
	var mig struct {
		Downtime int64 `json:"downtime"`
	}
	if err := sess.Execute(ctx, "query-migrate", nil, &mig); err != nil {
		cap.abort()
		return nil, fmt.Errorf("livecut: %w", err)
	}
	res, err := cap.wait(cctx)
	if err != nil {
		return nil, fmt.Errorf("livecut: %w", err)
	}
	if !c.tracked {
		c.fillImage()
	}
	stats := CutStats{Freeze: t.resumed.Sub(t.completed), Fleece: c.fleeceTime, Transaction: c.txTime, Cont: t.resumed.Sub(t.cont), Downtime: time.Duration(mig.Downtime) * time.Millisecond, Capture: time.Since(t.migStart), StreamBytes: res.Stats.StreamBytes,
		RAMPath: RAMFull, Scan: c.scanTime, Pass: t.pass, Precopy: c.precopyTime, PrecopyPages: c.precopyPages}
	if c.tracked {
		stats.RAMPath, stats.DirtyPages = RAMTracked, dirtylog.Pages(c.dirty)
	}
	if c.background {
		backgroundStats(&stats, t)
	}
	stats.DiskFreeze = FreezeStopped
	switch {
	case c.late:
		stats.DiskFreeze = FreezeLate
	case c.early:
		stats.DiskFreeze = FreezeEarly
	}
	if !t.stopAt.IsZero() {
		stats.Pause = t.resumed.Sub(t.stopAt)
	}
	snap := &sender.Snapshot{Cut: t.stopAt, DeviceState: res.Skeleton, Pause: stats.Pause, HypervisorDowntime: stats.Downtime, Group: group}
	bitmap, err := c.exportTargets(ctx, sess, snap, sizes, stats)
	if err != nil {
		return nil, err
	}
	s.log.Debug("cut", "gen", c.gen, "group", group != nil, "pause", stats.Pause, "downtime", stats.Downtime, "freeze", stats.Freeze, "fleece", stats.Fleece, "transaction", stats.Transaction, "cont", stats.Cont, "scan", stats.Scan, "precopy", stats.Precopy, "precopy_pages", stats.PrecopyPages, "capture", stats.Capture,
		"stream_bytes", stats.StreamBytes, "ram", stats.RAMPath, "pass", stats.Pass, "background", stats.Background, "disks", stats.DiskFreeze, "dirty_pages", stats.DirtyPages, "chain", bitmap != "")
	return snap, nil
}

// exportTargets completes snap, a cut taken with the guest stopped: each
// disk is exported over NBD (with the previous cut's bitmap, if the chain
// holds) and checked against its node's size, each RAM block read from
// the parsed stream. It returns the bitmap used ("" for a full read).
func (c *cut) exportTargets(ctx context.Context, sess Monitor, snap *sender.Snapshot, sizes []int64, stats CutStats) (string, error) {
	s := c.s
	bitmap := ""
	if c.prev != nil {
		bitmap = bitmapName(c.prev.gen)
	}
	if snap.Cut.IsZero() {
		snap.Cut = s.o.Now()
	}
	for i, d := range s.o.Disks {
		exp := exportName(c.gen, i)
		args := map[string]any{"type": "nbd", "id": exp, "node-name": c.nodes[i], "name": exp, "writable": false}
		if bitmap != "" {
			args["bitmaps"] = []map[string]any{{"node": d.Node, "name": bitmap}}
		}
		if err := sess.Execute(ctx, "block-export-add", args, nil); err != nil {
			if outcomeUnknown(err) {
				c.exports = append(c.exports, exp)
			}
			return "", fmt.Errorf("livecut: export disk %q: %w", d.Name, err)
		}
		c.exports = append(c.exports, exp)
		im, err := openExport(ctx, s.nbdSock, exp, bitmap)
		if err != nil {
			return "", fmt.Errorf("livecut: disk %q: %w", d.Name, err)
		}
		c.images = append(c.images, im)
		if im.Size() != sizes[i] {
			return "", fmt.Errorf("livecut: disk %q: export is %d bytes, the node %d", d.Name, im.Size(), sizes[i])
		}
		snap.Targets = append(snap.Targets, c.diskTarget(d, im, bitmap))
	}
	sk, err := migstream.ParseSkeleton(snap.DeviceState)
	if err != nil {
		return "", fmt.Errorf("livecut: device state: %w", err)
	}
	if sk.IgnoreShared() && !c.tracked {
		// Someone else turned x-ignore-shared on: RAM in shared backends
		// is missing from the stream, and the replica must not get zeros.
		return "", fmt.Errorf("livecut: the migration left out shared guest RAM (x-ignore-shared is on in QEMU): %w", ErrCutFailed)
	}
	if c.tracked {
		// The replica keeps device state as a cut without the capability
		// would have it: a takeover loads it like any other, RAM mapped
		// from the replica.
		if snap.DeviceState, err = sk.WithoutIgnoreShared().MarshalBinary(); err != nil {
			return "", fmt.Errorf("livecut: device state: %w", err)
		}
	}
	for i, b := range c.cap.img.BlockList() {
		if c.tracked && b.ID == s.o.SharedRAM {
			if s.ram == nil || s.ram.size != b.Length {
				return "", fmt.Errorf("livecut: tracked RAM block %q is %d bytes in the stream: %w", b.ID, b.Length, ErrCutFailed)
			}
			t, err := s.ramTarget(b.ID, c.gen, c.dirty, c.ramPrev)
			if err != nil {
				return "", err
			}
			snap.Targets = append(snap.Targets, t)
			continue
		}
		nz := c.cap.img.NonZero(i)
		snap.Targets = append(snap.Targets, sender.Target{
			Kind: vmspec.KindRAM, Name: b.ID, Size: b.Length, BlockSize: vmspec.PageSize,
			Reader:  c.cap.img.ReaderAt(i),
			Extents: func(context.Context, int64, int64) ([]sender.Extent, error) { return ramExtents(nz), nil },
		})
	}
	if c.tracked && !slices.ContainsFunc(snap.Targets, func(t sender.Target) bool { return t.Kind == vmspec.KindRAM && t.Name == s.o.SharedRAM }) {
		return "", fmt.Errorf("livecut: the migration stream has no RAM block %q: %w", s.o.SharedRAM, ErrCutFailed)
	}
	stats.NBDSocket, stats.Exports = s.nbdSock, c.exports
	s.lastStats = stats
	snap.Planned = c.recordPlanned
	snap.Close = c.close
	return bitmap, nil
}

// PauseAlarm is the guest pause per cut beyond which the sender reports
// it loudly: cuts pause the guest for milliseconds.
const PauseAlarm = time.Second

// checkRunning refuses to cut a guest that is not running: a cut ends
// with cont, which must never resume a guest someone else paused (or the
// source of the operator's own migration). A guest an earlier cut of
// this process left stopped (its cont failed) is resumed first. A guest
// running while someone else migrates it is not cut either (ErrMigrating):
// QEMU allows one migration, and the cut's parameters would change the
// operator's.
func (s *Source) checkRunning(ctx context.Context, sess Monitor) error {
	var st struct{ Status string }
	if err := sess.Execute(ctx, "query-status", nil, &st); err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	var mig struct{ Status string }
	if err := sess.Execute(ctx, "query-migrate", nil, &mig); err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	if st.Status == "running" {
		if slices.Contains(migrationActive, mig.Status) || mig.Status == "cancelling" {
			// Not this process's: its cuts are one at a time, and a new
			// session cancels a killed predecessor's migration.
			return migratingError(mig.Status)
		}
		return nil
	}
	m, err := readCutMarker(s.o.FS, s.o.WorkDir)
	if resumeAfterKilledCut(observed{Status: st.Status, Migration: mig.Status, CutInFlight: err == nil, CutStopped: err == nil && m.Stopped}) && !s.o.Final {
		s.log.Warn("resuming the guest an earlier cut left paused")
		if err := sess.Execute(ctx, "cont", nil, nil); err != nil {
			return fmt.Errorf("livecut: resume the guest an earlier cut left paused: %w", err)
		}
		s.unmarkCut()
		return nil
	}
	if s.o.Final {
		// A switch-back may cut a guest the operator stopped first.
		return nil
	}
	return fmt.Errorf("livecut: the guest is not running (QEMU status %q, migration %q): %w; drsync neither cuts nor resumes a guest paused by someone else", st.Status, mig.Status, ErrGuestPaused)
}

// freeze runs while the guest is stopped: fleecing nodes, then one
// transaction that freezes the old bitmap, starts the new one and starts
// copy-before-write, so all three see the same instant.
func (c *cut) freeze(ctx context.Context, sess Monitor) error {
	s := c.s
	if c.early {
		if c.late = c.overtaken(ctx, sess); !c.late {
			s.early.result(false)
			return nil
		}
		s.early.result(true)
		return c.freezeLate(ctx, sess)
	}
	if !c.background {
		// Added only now: a node that exists before the migration
		// completes is inactivated with the others and refuses to become
		// a target.
		if err := c.addFleeceNodes(ctx, sess); err != nil {
			return err
		}
	}
	var bitmaps []map[string]any
	if !c.background {
		// A background cut does its bitmaps outside the pause
		// (background.go).
		for _, d := range s.o.Disks {
			bitmaps = append(bitmaps, c.freezeActions(d)...)
			bitmaps = append(bitmaps, c.bitmapActions(d)...)
		}
	}
	tx := time.Now()
	err := c.startJobs(ctx, sess, bitmaps, !c.background, c.nodes, backupJob)
	c.txTime = time.Since(tx)
	return err
}

// startJobs runs the cut transaction: the actions given (bitmaps: the
// chain's freeze and this cut's bitmap), then a backup job (named by
// job) from each disk into its node of nodes. Done, or perhaps done, the
// jobs and bitmaps are torn down as done.
func (c *cut) startJobs(ctx context.Context, sess Monitor, actions []map[string]any, bitmaps bool, nodes []string, job func(gen uint64, disk int) string) error {
	for i, d := range c.s.o.Disks {
		actions = append(actions,
			map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": job(c.gen, i), "device": d.Node, "target": nodes[i], "sync": "none"}},
		)
	}
	err := sess.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil)
	if err != nil && !outcomeUnknown(err) {
		return fmt.Errorf("cut transaction: %w", err)
	}
	if bitmaps {
		c.bitmap, c.frozen = true, true
	}
	for i := range c.s.o.Disks {
		c.jobs = append(c.jobs, job(c.gen, i))
	}
	if err != nil {
		return fmt.Errorf("cut transaction: %w", err)
	}
	return nil
}

// freezeActions disable the previous cut's bitmap of disk d, if the cut
// continues a chain: it then holds the changes up to this cut.
func (c *cut) freezeActions(d Disk) []map[string]any {
	if c.prev == nil {
		return nil
	}
	return []map[string]any{{"type": "block-dirty-bitmap-disable", "data": map[string]any{"node": d.Node, "name": bitmapName(c.prev.gen)}}}
}

// bitmapActions add this cut's bitmap of disk d, recording the changes
// the next cut reads.
func (c *cut) bitmapActions(d Disk) []map[string]any {
	return []map[string]any{{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": d.Node, "name": bitmapName(c.gen), "granularity": d.BlockSize}}}
}

// addFleeceNodes adds each disk's fleecing node: its overlay file, backed
// by the disk's node.
func (c *cut) addFleeceNodes(ctx context.Context, sess Monitor) error {
	t0 := time.Now()
	if err := c.addNodes(ctx, sess, "fleecing node", fleeceNode, c.files, &c.nodes); err != nil {
		return err
	}
	c.fleeceTime = time.Since(t0)
	return nil
}

// addNodes adds a qcow2 node per disk, named by name, on its file of
// files, backed by the disk's node; each added, or perhaps added, goes to
// *added, to be torn down with the cut.
func (c *cut) addNodes(ctx context.Context, sess Monitor, what string, name func(gen uint64, disk int) string, files []string, added *[]string) error {
	for i, d := range c.s.o.Disks {
		n := name(c.gen, i)
		err := sess.Execute(ctx, "blockdev-add", map[string]any{
			"driver": "qcow2", "node-name": n, "backing": d.Node,
			"file": map[string]any{"driver": "file", "filename": files[i]},
		}, nil)
		if err == nil || outcomeUnknown(err) {
			*added = append(*added, n)
		}
		if err != nil {
			return fmt.Errorf("%s for disk %q: %w", what, d.Name, err)
		}
	}
	return nil
}

// outcomeUnknown says whether a command that failed may have been carried
// out all the same. QEMU's refusal (a *qmp.CommandError) undoes it; a
// command whose reply never came (the context ended, as at a sender's
// SIGTERM, or the connection did) may have run, so what it creates is
// torn down as if it had been: removing what is not there only fails. A
// cut transaction taken as refused left its backup jobs and fleecing
// nodes in QEMU, where they kept the next migration from inactivating
// the disks ("bdrv_inactivate_all() failed").
func outcomeUnknown(err error) bool {
	var ce *qmp.CommandError
	return err != nil && !errors.As(err, &ce)
}

// diskTarget serves a disk from its fleecing export: allocation from
// base:allocation, and with a chain, unchanged ranges from the bitmap.
func (c *cut) diskTarget(d Disk, im *diskmirror.NBDImage, bitmap string) sender.Target {
	t := sender.Target{Kind: vmspec.KindDisk, Name: d.Name, Size: im.Size(), BlockSize: d.BlockSize,
		Reader: readerFunc(func(p []byte, off int64) (int, error) {
			n, err := im.ReadAt(p, off)
			if err != nil && err != io.EOF {
				err = c.lost(d, err)
			}
			return n, err
		})}
	if c.prev != nil {
		if prev := c.prev.tables[sender.TableKey(vmspec.KindDisk, d.Name)]; prev != nil && prev.Size == im.Size() && prev.BlockSize == d.BlockSize {
			t.Prev = prev
		}
	}
	usePrev := t.Prev != nil
	t.Extents = func(ctx context.Context, off, n int64) ([]sender.Extent, error) {
		if !usePrev {
			alloc, err := im.Extents(ctx, off, n)
			if err != nil {
				return nil, c.lost(d, err)
			}
			return mergeExtents(alloc, nil), nil
		}
		// With a bitmap, only dirty blocks are read, and the planner finds
		// zeros among them by content. Asking QEMU for the allocation map
		// as well would cost SEEK_DATA/SEEK_HOLE calls on the live image,
		// which QEMU makes while holding its global lock: the guest stalls.
		dirty, err := im.DirtyExtents(ctx, bitmap, off, n)
		if err != nil {
			return nil, c.lost(d, err)
		}
		return mergeExtents([]diskmirror.Extent{{Off: off, Len: n}}, dirty), nil
	}
	return t
}

type readerFunc func(p []byte, off int64) (int, error)

func (f readerFunc) ReadAt(p []byte, off int64) (int, error) { return f(p, off) }

// lost explains a failed read of a disk's view: the view is gone for good
// (an NBD connection is not resumed), so the epoch must be cut anew.
func (c *cut) lost(d Disk, err error) error {
	if sess := c.s.sess; sess != nil {
		select {
		case <-sess.Done():
		case <-time.After(100 * time.Millisecond):
			// Give a dying QEMU's QMP connection the moment it needs to end.
		}
		if serr := sess.Err(); serr != nil {
			return fmt.Errorf("livecut: disk %q: %w: %w (%w)", d.Name, serr, ErrVMGone, sender.ErrSnapshotLost)
		}
	}
	return fmt.Errorf("livecut: disk %q: point-in-time view unreadable: %w (%w)", d.Name, err, sender.ErrSnapshotLost)
}

// recordPlanned keeps the cut's disk tables: the next cut's bitmap counts
// changes from this instant.
func (c *cut) recordPlanned(tables map[string]*blockhash.Table) {
	ci := &cutIndex{gen: c.gen, tables: map[string]*blockhash.Table{}}
	for _, d := range c.s.o.Disks {
		k := sender.TableKey(vmspec.KindDisk, d.Name)
		if t := tables[k]; t != nil {
			ci.tables[k] = t // shared, never changed in place (blockhash.Table)
		}
	}
	if s := c.s; s.ram != nil && s.ram.imageGen == c.gen {
		if t := tables[sender.TableKey(vmspec.KindRAM, s.o.SharedRAM)]; t != nil {
			c.ramTable = t
		}
	}
	c.planned = ci
}

// close tears the cut down in the order QEMU needs; with the cut planned,
// its bitmap continues the chain.
func (c *cut) close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	s := c.s
	if s.open == c {
		s.open = nil
	}
	var errs []error
	for _, im := range c.images {
		errs = append(errs, im.Close())
	}
	sess := s.sess
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	alive := sess != nil && sess.Err() == nil
	t0 := time.Now()
	defer func() { s.log.Debug("teardown", "took", time.Since(t0)) }()
	if alive {
		var steps []step
		for _, e := range c.exports {
			steps = append(steps, step{Cmd: "block-export-del", Args: map[string]any{"id": e, "mode": "hard"}, WaitGone: e})
		}
		for _, j := range c.jobs {
			steps = append(steps, step{Cmd: "block-job-cancel", Args: map[string]any{"device": j, "force": true}, WaitGone: j})
		}
		if c.prev != nil && c.frozen {
			for _, d := range s.o.Disks {
				steps = append(steps, step{Cmd: "block-dirty-bitmap-remove", Args: map[string]any{"node": d.Node, "name": bitmapName(c.prev.gen)}})
			}
		}
		if c.bitmap && c.planned == nil {
			// The cut's tables are unknown: its bitmap cannot be used.
			for _, d := range s.o.Disks {
				steps = append(steps, step{Cmd: "block-dirty-bitmap-remove", Args: map[string]any{"node": d.Node, "name": bitmapName(c.gen)}})
			}
		}
		for _, n := range append(slices.Clone(c.nodes), c.spare...) {
			steps = append(steps, step{Cmd: "blockdev-del", Args: map[string]any{"node-name": n}})
		}
		errs = append(errs, s.run(ctx, sess, steps))
	}
	if c.thr != nil {
		c.thr.Close()
	}
	for _, f := range append(slices.Clone(c.files), c.lateFiles...) {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if c.cap != nil {
		// The parser may still be writing into the image of a cut that
		// failed before its stream ended.
		c.cap.abort()
		errs = append(errs, c.cap.img.Close())
		c.cap = nil
	}
	// Planning and sending all of RAM, or a large tracked cut's copy (the
	// first after a full one holds every page written while the full
	// epoch was sent), leaves the heap grown by garbage that the runtime
	// would hand back to the kernel only slowly, and a collector's goal
	// that lasts into the steady state: such cuts are rare, so the
	// collection is cheap against the memory each VM would otherwise keep.
	free := c.fullSlot
	if c.fullSlot {
		releaseFullCut()
		c.fullSlot = false
	}
	if c.ramTable != nil && s.ram != nil && s.ram.imageGen == c.gen {
		s.ram.table, s.ram.tableGen = c.ramTable, c.gen
	}
	if s.ram != nil && s.ram.imageGen == c.gen {
		// The pages this cut copied were for its epoch only: the next cut
		// copies its own. Kept, they stayed between epochs at the size of
		// the largest cut (20 MB of a 2 GiB guest's, after the writes
		// during its first full epoch).
		if s.ram.written != nil && len(s.ram.written.data) >= largeCopy {
			free = true
		}
		// The sender keeps the epoch's plan, and through it this copy,
		// until the epoch's result is out: dropped only here, a large
		// copy was still live at the collection below and set the
		// collector's goal for the steady state.
		s.ram.written.release()
		s.ram.written = nil
	}
	if free {
		debug.FreeOSMemory()
	}
	switch {
	case c.planned != nil && c.bitmap && alive:
		s.last = c.planned
		if err := s.saveState(c.planned); err != nil {
			s.log.Warn("cannot save the change-tracking state; after a restart the next epoch compares every block", "err", err)
			s.removeState()
		}
	case c.frozen:
		// The old bitmap was frozen by this cut: the chain ends here.
		s.last = nil
		s.removeState()
	}
	if err := errors.Join(errs...); err != nil {
		if sess != nil {
			// Let the next session's cleanup find what is left.
			sess.Close()
			s.sess = nil
		}
		return fmt.Errorf("livecut: tear down cut %d: %w", c.gen, err)
	}
	return nil
}

func (s *Source) cancelMigration(sess Monitor) {
	if sess.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.run(ctx, sess, []step{{Cmd: "migrate_cancel"}}); err != nil {
		s.log.Warn("cancel the migration", "err", err)
	}
}
