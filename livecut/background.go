package livecut

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/sender"
)

// A background cut is how a tracked cut takes its device state when QEMU
// allows it. A migration's completion inactivates every block node, so
// the fleecing nodes can only be added, and the cut transaction only run,
// once it has completed, and cont must then activate the disks again:
// about 7 ms of QMP work per cut inside the guest's pause on QEMU 7.2. A
// background snapshot (the background-snapshot capability, QEMU 6.0 on,
// with userfaultfd write protection in the kernel) saves the device state
// without inactivating anything and resumes the guest by itself. So:
//
//	blockdev-add drsync-f<gen>-<i>          guest running
//	transaction: bitmap-add b<gen>          guest running (bitmapsBefore)
//	stop                                    STOP: the cut's instant
//	  scan and copy the written RAM pages
//	  transaction: blockdev-backup          the fleecing views (or before
//	                                        the stop: early.go)
//	migrate (background-snapshot on)        QEMU saves the device state and
//	                                        resumes the guest (RESUME); the
//	                                        blocks outside the shared RAM
//	                                        follow, write-protected
//	transaction: bitmap-disable b<prev>     guest running (freezeAfter)
//
// The stream has no RAM END (migstream accepts that layout). A QEMU that
// refuses the capability (too old, or a kernel without write-protected
// userfaultfd), or whose background snapshot fails, gets the migration
// path from then on.

// setCaptureCaps sets the capabilities of a cut's migration, for a source
// that tracks RAM (one that does not never touches them): x-ignore-shared
// on for a tracked cut, and background-snapshot on when background is
// asked and QEMU has not refused it before. It reports whether the cut
// goes the background way. x-ignore-shared is set first: QEMU checks that
// it can write-protect every RAM block a background snapshot would save,
// and the shared backend, whose writes drsync's tracker already follows,
// must be left out by then.
func (s *Source) setCaptureCaps(ctx context.Context, sess Monitor, tracked, background bool) (bool, error) {
	if s.o.TrackRAM == nil {
		return false, nil
	}
	if err := setCaps(ctx, sess, map[string]bool{"x-ignore-shared": tracked}); err != nil {
		return false, err
	}
	if !hasBackground(sess.Version()) {
		return false, nil
	}
	if !background || s.backgroundOff {
		if !s.backgroundOn {
			return false, nil
		}
		if err := setCaps(ctx, sess, map[string]bool{"background-snapshot": false}); err != nil {
			return false, err
		}
		s.backgroundOn = false
		return false, nil
	}
	err := setCaps(ctx, sess, map[string]bool{"background-snapshot": true})
	var ce *qmp.CommandError
	if errors.As(err, &ce) {
		s.backgroundOff = true
		s.log.Warn("QEMU refuses background snapshots; tracked cuts take the device state by a migration, a longer pause", "err", err)
		return false, nil
	}
	s.backgroundOn = true // or perhaps, when no reply came
	return err == nil, err
}

// resetCaptureCaps turns x-ignore-shared off, and background-snapshot if
// it may be on, after a tracked cut and when a session starts: left on,
// they would make an operator's own migration leave the guest's RAM
// behind, or make it a snapshot.
func (s *Source) resetCaptureCaps(ctx context.Context, sess Monitor) error {
	if s.o.TrackRAM == nil {
		return nil
	}
	caps := map[string]bool{"x-ignore-shared": false}
	if s.backgroundOn {
		caps["background-snapshot"] = false
	}
	if err := setCaps(ctx, sess, caps); err != nil {
		return err
	}
	s.backgroundOn = false
	return nil
}

// hasBackground says whether QEMU v knows the background-snapshot
// capability (6.0 on).
func hasBackground(v qmp.Version) bool { return v.Major >= 6 }

func setCaps(ctx context.Context, sess Monitor, caps map[string]bool) error {
	var list []map[string]any
	// In a fixed order: the trace of scripted tests compares it.
	for _, name := range []string{"background-snapshot", "x-ignore-shared"} {
		if on, ok := caps[name]; ok {
			list = append(list, map[string]any{"capability": name, "state": on})
		}
	}
	return sess.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil)
}

// backgroundCut is the rest of a background cut from its mark on: the
// guest stopped, the RAM scanned and the disks frozen, then the device
// state saved by QEMU, which resumes the guest. *marked is cleared once
// the guest runs again (or the mark must stay for the guard).
func (c *cut) backgroundCut(ctx, cctx context.Context, sess Monitor, sub qmp.Events, cap *capture, sizes []int64, marked *bool) (_ *sender.Snapshot, err error) {
	s := c.s
	t := cutTimes{migStart: time.Now(), pass: PassStopped}
	// Until the guest is seen running again, a failure resumes it: cont
	// is harmless if QEMU already did. The capabilities go off too, before
	// the teardown, or an operator's migration would be a snapshot.
	resume := func() {
		if err := sess.Execute(context.WithoutCancel(ctx), "cont", nil, nil); err != nil {
			s.log.Error("could not resume the guest after a failed cut", "err", err)
			*marked = false // the mark stays: the guard, or the next cut, resumes it
		}
	}
	weStopped, reset := false, true
	defer func() {
		if err == nil || sess.Err() != nil {
			return
		}
		if weStopped {
			resume()
		}
		if reset {
			if err := s.resetCaptureCaps(context.WithoutCancel(ctx), sess); err != nil {
				s.log.Warn("could not turn x-ignore-shared and background-snapshot off after a failed cut", "err", err)
			}
		}
	}()
	if err := c.beforeStop(cctx, sess); err != nil {
		cap.abort()
		return nil, err
	}
	if err := sess.Execute(cctx, "stop", nil, nil); err != nil {
		cap.abort()
		return nil, fmt.Errorf("livecut: stop the guest for the cut: %w", err)
	}
	weStopped = true
	t.completed = time.Now()
	// QEMU sends STOP before the reply, and only if the guest ran: a
	// guest someone paused since the cut began must stay paused, and the
	// background snapshot would resume it.
	if err := s.awaitOwnStop(cctx, sub, &t); err != nil {
		weStopped = false
		cap.abort()
		return nil, err
	}
	if s.o.AfterMigration != nil {
		s.o.AfterMigration()
	}
	scanErr, frozenErr := c.whileStopped(cctx, sess)
	if scanErr != nil || frozenErr != nil {
		cap.abort()
		weStopped = false
		resume()
		reset = false // afterResume does it
		if err := c.afterResume(ctx, sess, scanErr); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("livecut: %w: %w", frozenErr, ErrCutFailed)
	}
	t.cont = time.Now()
	if err := sess.Execute(cctx, "migrate", map[string]any{"uri": "unix:" + cap.path}, nil); err != nil {
		cap.abort()
		return nil, fmt.Errorf("livecut: %w", err)
	}
	if err := s.awaitBackground(ctx, cctx, sess, sub, &t); err != nil {
		cap.abort()
		return nil, err
	}
	weStopped, reset = false, false
	s.unmarkCut()
	*marked = false
	if err := c.afterResume(ctx, sess, nil); err != nil {
		cap.abort()
		return nil, err
	}
	if err := c.freezeAfter(ctx, sess); err != nil {
		cap.abort()
		return nil, fmt.Errorf("livecut: %w", err)
	}
	return c.settle(ctx, cctx, sess, cap, sizes, t, nil)
}

// awaitBackground waits on sub (within cctx) for a background snapshot
// to resume the guest and complete, setting the instants of the cut's
// STOP (the cut's own stop) and of QEMU's RESUME in t. A migration that
// fails or is cancelled is explained with QEMU's reason, asked within
// ctx; the caller resumes the guest if QEMU did not.
func (s *Source) awaitBackground(ctx, cctx context.Context, sess Monitor, sub qmp.Events, t *cutTimes) error {
	resumed, completed := false, false
	for !resumed || !completed {
		e, err := sub.Next(cctx)
		if err != nil {
			s.cancelMigration(sess)
			return fmt.Errorf("livecut: waiting for the background snapshot to complete: %w", err)
		}
		switch e.Name {
		case "SHUTDOWN":
			return fmt.Errorf("livecut: the VM shut down (%s) during the cut: %w", e.Str("reason"), ErrVMGone)
		case "STOP":
			if t.stopAt.IsZero() {
				t.stopAt = e.At
			}
		case "RESUME":
			resumed, t.resumed = true, e.At
		case "MIGRATION":
			switch st := e.Str("status"); st {
			case "completed":
				completed = true
			case "failed", "cancelled":
				err := s.migrationFailed(ctx, sess, st)
				if st == "failed" {
					// Whatever QEMU objects to would likely recur: the
					// migration path is the fallback from now on.
					s.backgroundOff = true
					s.log.Warn("QEMU's background snapshot failed; tracked cuts take the device state by a migration from now on", "err", err)
				}
				return err
			}
		}
	}
	return nil
}

// prepareBackground readies a background cut while its guest runs: the
// fleecing nodes, the early jobs' spare overlays and write thresholds
// (early.go), and the new bitmaps.
func (c *cut) prepareBackground(ctx context.Context, sess Monitor) error {
	if err := c.tryEarly(); err != nil {
		return err
	}
	if err := c.addFleeceNodes(ctx, sess); err != nil {
		return err
	}
	if err := c.armEarly(ctx, sess); err != nil {
		return err
	}
	return c.bitmapsBefore(ctx, sess)
}

// bitmapsBefore adds this cut's bitmaps before its stop, and freezeAfter
// disables the previous cut's after the guest runs again: neither needs
// the cut's instant, only to hold every change on its side of it. The
// new bitmap then also records the writes of the moments before the stop
// and the old one those of the moments after: blocks the next cut and
// this one read needlessly (their hashes match), never a change missed.
// That takes the bitmaps out of the pause, leaving the transaction only
// the backup jobs, which do need the instant.
func (c *cut) bitmapsBefore(ctx context.Context, sess Monitor) error {
	var actions []map[string]any
	for _, d := range c.s.o.Disks {
		actions = append(actions, c.bitmapActions(d)...)
	}
	err := sess.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil)
	if err != nil && !outcomeUnknown(err) {
		return fmt.Errorf("new bitmaps: %w", err)
	}
	c.bitmap = true // or perhaps: torn down as added
	if err != nil {
		return fmt.Errorf("new bitmaps: %w", err)
	}
	return nil
}

// freezeAfter is bitmapsBefore's other half. A cut that fails before it
// leaves the previous bitmap recording: the chain goes on from there.
func (c *cut) freezeAfter(ctx context.Context, sess Monitor) error {
	if c.prev == nil {
		return nil
	}
	var actions []map[string]any
	for _, d := range c.s.o.Disks {
		actions = append(actions, c.freezeActions(d)...)
	}
	c.frozen = true // even if the reply never comes: the chain then ends
	if err := sess.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
		return fmt.Errorf("freeze the previous bitmaps: %w", err)
	}
	return nil
}

// awaitOwnStop takes the STOP event of the cut's own stop, queued before
// the command's reply; with none there (or SHUTDOWN), the guest was not
// running: it is left as it is, and the cut fails with ErrGuestPaused.
func (s *Source) awaitOwnStop(cctx context.Context, sub qmp.Events, t *cutTimes) error {
	ctx, cancel := context.WithTimeout(cctx, ownStopWait)
	defer cancel()
	for {
		e, err := sub.Next(ctx)
		switch {
		case err == nil && e.Name == "STOP":
			t.stopAt = e.At
			return nil
		case err == nil && e.Name == "SHUTDOWN":
			return fmt.Errorf("livecut: the VM shut down (%s) during the cut: %w", e.Str("reason"), ErrVMGone)
		case err == nil:
			continue // a RESUME before the stop, say: not the cut's
		case cctx.Err() != nil || ctx.Err() == nil:
			return fmt.Errorf("livecut: waiting for the guest to stop: %w", err)
		}
		return fmt.Errorf("livecut: the guest was paused by someone else as the cut began (the cut's stop stopped nothing): %w; drsync neither cuts nor resumes a guest paused by someone else", ErrGuestPaused)
	}
}

// ownStopWait bounds the wait for the cut's own STOP, which QEMU queues
// before the stop command's reply: a longer wait means there was none.
const ownStopWait = 500 * time.Millisecond

// backgroundStats fills in what differs in a background cut's figures.
func backgroundStats(st *CutStats, t cutTimes) {
	st.Background = true
	st.Freeze = t.cont.Sub(t.completed)
}
