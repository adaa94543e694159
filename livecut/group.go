package livecut

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/vmspec"
)

// A cut for a consistency group is taken in steps, so that every member
// is stopped at one instant and the pauses overlap. A member's cut takes
// the full path (all of RAM in the migration) or, when a single cut of it
// would, the tracked path (device state only, the written pages copied;
// ramtrack.go); members of a group may take different paths.
//
//	PrepareGroupCut   overlays, capture socket, cut mark. Full: migrate
//	                  with a downtime limit of 1 ms. Tracked:
//	                  x-ignore-shared on, and nothing runs yet; where
//	                  QEMU allows background snapshots (background.go),
//	                  background-snapshot on, the fleecing nodes and the
//	                  new bitmaps added
//	WaitConverged     full: until the first full pass is within 3 MiB of
//	                  its end; then drsync stops reading the stream, so
//	                  QEMU's migration thread blocks in its write and
//	                  cannot complete (and stop the guest) by itself while
//	                  the other members converge. Tracked: at once
//	Stop              stop (QMP). Full: the stream read again at once,
//	                  downtime limit restored: the migration sends the
//	                  rest and completes. Tracked: the device state
//	                  migrates (not in the background way), then the
//	                  written pages are scanned and copied. Then the same
//	                  freeze as a single cut (fleecing nodes, bitmap
//	                  transaction; the background way: the backup jobs
//	                  only). The guest stays stopped. Its device state
//	                  records it paused (QEMU stores the run state when
//	                  it saves it), so a takeover of this epoch resumes it
//	                  with cont, as it does a final cut's.
//	Resume            cont (the background way: the background snapshot
//	                  saves the device state and resumes the guest, then
//	                  the old bitmaps are disabled), exports: the
//	                  snapshot, tagged with the group cut
//	Abort             at any step: the migration cancelled or the guest
//	                  resumed, everything torn down; the guest runs. The
//	                  pages an aborted tracked cut scanned are carried to
//	                  the next tracked cut (unscan).
//
// The cut-in-flight mark covers the steps as it covers a single cut: a
// sender that dies while holding the guest stopped leaves it to the guard.

// Downtime limits (ms) of a group cut: holdDowntime keeps the migration
// iterating while the guest runs; QEMU's default lets it complete.
const (
	holdDowntime    = 1
	defaultDowntime = 300
	// convergedRemaining: the first pass is this close to its end when the
	// stream is held. What is left, and what the guest dirtied during the
	// pass, is sent after the stop, at full speed: the less, the shorter
	// the pause. Less would often miss the end of the pass between two
	// polls (about 1.5 MiB go by in one on a loaded host), and a guest
	// that dirties little may then complete, and stop, on its own.
	// The hold is not a bandwidth limit: QEMU applies a new max-bandwidth
	// only at the end of its 100 ms rate-limit window, so a migration
	// throttled until the stop would add up to 100 ms to the pause.
	convergedRemaining = 3 << 20
)

// GroupCut is one cut of this VM in progress for a consistency group.
type GroupCut struct {
	s         *Source
	c         *cut
	sess      Monitor
	cap       *capture
	sub       qmp.Events
	sizes     []int64
	t         cutTimes
	stopped   bool // the migration completed (or, background, the cut froze): the guest waits for cont
	weStopped bool // stop issued: until cont, an abort must resume the guest
	// bgMigrating: Resume's background snapshot was started and has not
	// completed; an abort cancels it (the guest is resumed either way).
	bgMigrating bool
	done        bool
	cancel      context.CancelFunc
	ctx         context.Context
}

// PrepareGroupCut starts a cut whose stop the caller decides: on the full
// path the migration starts and iterates while the guest runs; on the
// tracked path nothing runs before the stop.
func (s *Source) PrepareGroupCut(ctx context.Context) (g *GroupCut, err error) {
	if s.open != nil {
		return nil, errors.New("livecut: the previous snapshot is still open; QEMU allows one cut in flight")
	}
	sess, err := s.session(ctx)
	if err != nil {
		return nil, err
	}
	c := &cut{s: s, gen: s.nextGen(), prev: s.last}
	s.open = c
	g = &GroupCut{s: s, c: c, sess: sess, t: cutTimes{pass: PassLive}}
	g.ctx, g.cancel = context.WithTimeout(context.WithoutCancel(ctx), s.o.CutTimeout)
	defer func() {
		if err != nil {
			g.Abort()
			g = nil
		}
	}()
	if err := s.checkRunning(ctx, sess); err != nil {
		return g, err
	}
	if g.sizes, err = c.prepareDisks(ctx, sess); err != nil {
		return g, err
	}
	// Decided (and the tracker started: a ptrace stop of QEMU) while the
	// guest runs.
	c.tracked = s.trackedCut()
	if err := c.precopy(); err != nil {
		return g, err
	}
	if g.cap, err = c.startCapture(); err != nil {
		return g, fmt.Errorf("livecut: %w", err)
	}
	if err := s.markCut(c.gen); err != nil {
		return g, fmt.Errorf("livecut: %w", err)
	}
	// A full cut migrates all of RAM, a tracked one leaves the shared
	// backend out, and takes its device state by a background snapshot
	// where QEMU allows, as a single cut does: the fleecing nodes and the
	// new bitmaps come now, while the guest runs.
	if c.background, err = s.setCaptureCaps(ctx, sess, c.tracked, c.tracked); err != nil {
		return g, fmt.Errorf("livecut: %w", err)
	}
	if c.background {
		if err := c.prepareBackground(ctx, sess); err != nil {
			return g, fmt.Errorf("livecut: %w", err)
		}
	}
	g.sub = sess.Subscribe("STOP", "MIGRATION", "SHUTDOWN", "RESUME")
	if c.tracked || s.stoppedPass {
		// The migration starts once Stop has stopped the guest. The
		// downtime limit is the single cut's: with the guest stopped
		// the migration completes after one pass.
		g.t.pass = PassStopped
		if err := sess.Execute(ctx, "migrate-set-parameters", s.migrationParams(), nil); err != nil {
			return g, fmt.Errorf("livecut: %w", err)
		}
		return g, nil
	}
	if err := sess.Execute(ctx, "migrate-set-parameters", map[string]any{"downtime-limit": holdDowntime}, nil); err != nil {
		return g, fmt.Errorf("livecut: %w", err)
	}
	g.t.migStart = time.Now()
	if err := sess.Execute(ctx, "migrate", map[string]any{"uri": "unix:" + g.cap.path}, nil); err != nil {
		return g, fmt.Errorf("livecut: %w", err)
	}
	return g, nil
}

// RAMPath says how this cut takes the guest's RAM: RAMFull or RAMTracked.
func (g *GroupCut) RAMPath() string {
	if g.c.tracked {
		return RAMTracked
	}
	return RAMFull
}

// WaitConverged returns once the migration's first full pass is nearly
// done: only the end of that pass and what the guest dirtied since are
// left to send. From then on the stream is held (not read), so the
// migration cannot complete, and stop the guest, by itself before Stop:
// QEMU completes once what is left fits in the downtime limit at the
// measured bandwidth, which a guest that dirties little reaches even with
// a limit of 1 ms. A cut whose migration runs after the stop (tracked, or
// a stopped pass) has nothing to wait for.
func (g *GroupCut) WaitConverged(ctx context.Context) error {
	if g.t.pass == PassStopped {
		return nil
	}
	for {
		var mig struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
			RAM       struct {
				Remaining      int64 `json:"remaining"`
				DirtySyncCount int64 `json:"dirty-sync-count"`
			} `json:"ram"`
		}
		if err := g.sess.Execute(ctx, "query-migrate", nil, &mig); err != nil {
			return fmt.Errorf("livecut: %w", err)
		}
		switch mig.Status {
		case "completed", "pre-switchover", "device":
			return nil // converged by itself: the guest is stopped already
		case "failed", "cancelled":
			return fmt.Errorf("livecut: migration %s: %s: %w", mig.Status, mig.ErrorDesc, ErrCutFailed)
		}
		if mig.Status == "active" && (mig.RAM.DirtySyncCount >= 2 || (mig.RAM.DirtySyncCount == 1 && mig.RAM.Remaining < convergedRemaining)) {
			g.cap.hold()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("livecut: waiting for the migration to converge: %w", ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// Stop stops the guest and takes the cut; the guest stays stopped until
// Resume or Abort.
func (g *GroupCut) Stop(ctx context.Context) error {
	sess := g.sess
	// Stopped by us, now, rather than at whatever iteration QEMU would
	// pick: the members of a group stop within a QMP round trip of each
	// other. With the guest stopped nothing more is dirtied, so the
	// migration sends the rest and completes at once.
	//
	// The stream is released first: a migration that decided to complete
	// by itself writes its last part holding QEMU's big lock, and if that
	// write were held, QEMU could not even answer the stop.
	g.cap.release()
	// Marked first: a sender dying between this stop and the migration's
	// completion leaves a paused guest that only the mark shows is ours.
	if err := g.s.markCutStopped(g.c.gen, true); err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	if err := g.c.beforeStop(ctx, sess); err != nil {
		return err
	}
	// The background way takes the STOP of its own stop from events that
	// come after it is sent: one the group's subscription holds from
	// earlier is someone else's pause.
	own := sess.Subscribe("STOP", "SHUTDOWN")
	defer own.Close()
	err := sess.Execute(ctx, "stop", nil, nil)
	if err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	g.weStopped = true
	switch {
	case g.c.background:
		return g.stopBackground(ctx, own)
	case g.c.tracked:
		// Device state only: it migrates within the step, and the
		// written pages are copied as a single tracked cut copies them.
		return g.migrate(ctx)
	case g.t.pass == PassStopped:
		// The whole RAM pass runs in Resume, the guest still stopped: it
		// takes seconds, more than a step may, and every member is
		// stopped already, so the cut's instant is this stop.
		for g.t.stopAt.IsZero() {
			e, err := g.sub.Next(ctx)
			if err != nil {
				return fmt.Errorf("livecut: waiting for the guest to stop: %w", err)
			}
			if e.Name == "STOP" {
				g.t.stopAt = e.At
			}
		}
		return nil
	}
	if err := sess.Execute(ctx, "migrate-set-parameters", map[string]any{"downtime-limit": defaultDowntime}, nil); err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	return g.complete(ctx)
}

// stopBackground is Stop's background way: the stop's own STOP, then
// the written pages scanned and copied and the backup jobs started, the
// guest left stopped; Resume's background snapshot saves the device
// state and resumes the guest. A guest someone else paused as the cut
// began is left paused (ErrGuestPaused), as a single cut leaves it.
func (g *GroupCut) stopBackground(ctx context.Context, own qmp.Events) error {
	s := g.s
	if err := s.awaitOwnStop(ctx, own, &g.t); err != nil {
		if errors.Is(err, ErrGuestPaused) {
			g.weStopped = false
		}
		return err
	}
	if s.o.AfterMigration != nil {
		s.o.AfterMigration()
	}
	g.t.completed = time.Now()
	g.stopped = true
	return g.freeze(ctx)
}

// migrate runs the cut's migration of a stopped guest and completes the
// cut.
func (g *GroupCut) migrate(ctx context.Context) error {
	g.t.migStart = time.Now()
	if err := g.sess.Execute(ctx, "migrate", map[string]any{"uri": "unix:" + g.cap.path}, nil); err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	return g.complete(ctx)
}

// complete waits for the cut's migration to complete, the guest stopped,
// and freezes the cut.
func (g *GroupCut) complete(ctx context.Context) (err error) {
	s := g.s
	if g.t.completed, err = s.awaitMigration(ctx, ctx, g.sess, g.sub, &g.t.stopAt); err != nil {
		return err
	}
	g.stopped = true
	return g.freeze(ctx)
}

// freeze does, the guest stopped, what a single cut does then: the RAM
// scan and the disks' freeze. A failed scan fails a tracked cut at once
// (its abort resumes the guest); a full cut goes on without tracking.
func (g *GroupCut) freeze(ctx context.Context) error {
	s, c := g.s, g.c
	scanErr, frozenErr := c.whileStopped(ctx, g.sess)
	if scanErr != nil && c.tracked {
		s.dropTracking(scanErr)
		return fmt.Errorf("livecut: %w: %w", scanErr, ErrCutFailed)
	}
	if frozenErr != nil {
		return fmt.Errorf("livecut: %w: %w", frozenErr, ErrCutFailed)
	}
	c.scanErr = scanErr
	return nil
}

// Resume lets the guest run again and returns the cut as a snapshot
// carrying tag.
func (g *GroupCut) Resume(ctx context.Context, tag *vmspec.GroupCut) (snap *sender.Snapshot, err error) {
	s, c, sess := g.s, g.c, g.sess
	defer func() {
		if err != nil {
			g.Abort()
		}
	}()
	if g.t.pass == PassStopped && g.weStopped && !g.stopped {
		if err := g.migrate(g.ctx); err != nil {
			return nil, err
		}
	}
	if !g.stopped {
		return nil, errors.New("livecut: group cut resumed before it stopped")
	}
	g.t.cont = time.Now()
	if c.background {
		// QEMU saves the device state and resumes the guest.
		g.bgMigrating = true
		if err := sess.Execute(g.ctx, "migrate", map[string]any{"uri": "unix:" + g.cap.path}, nil); err != nil {
			return nil, fmt.Errorf("livecut: %w", err)
		}
		if err := s.awaitBackground(ctx, g.ctx, sess, g.sub, &g.t); err != nil {
			return nil, err
		}
		g.bgMigrating = false
	} else {
		if err := sess.Execute(context.WithoutCancel(ctx), "cont", nil, nil); err != nil {
			return nil, fmt.Errorf("livecut: resume the guest: %w", err)
		}
		g.t.resumed = time.Now()
	}
	g.stopped, g.weStopped = false, false
	s.unmarkCut()
	if err := c.afterResume(ctx, sess, c.scanErr); err != nil {
		return nil, err
	}
	if c.background {
		if err := c.freezeAfter(ctx, sess); err != nil {
			return nil, fmt.Errorf("livecut: %w", err)
		}
	}
	cap := g.cap
	g.cap = nil
	if snap, err = c.settle(ctx, g.ctx, sess, cap, g.sizes, g.t, tag); err != nil {
		return nil, err
	}
	g.done = true
	g.cancel()
	if g.sub != nil {
		g.sub.Close()
	}
	return snap, nil
}

// Abort drops the cut: a migration in flight is cancelled (QEMU resumes
// a guest it stopped), a guest stopped at the cut resumes, and what the
// cut made is torn down. It may be called at any step, and again.
func (g *GroupCut) Abort() error {
	if g.done {
		return nil
	}
	g.done = true
	defer g.cancel()
	s, sess := g.s, g.sess
	if g.cap != nil {
		g.cap.release() // a held migration could not be cancelled
	}
	var errs []error
	if sess.Err() == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if !g.stopped || g.bgMigrating {
			s.cancelMigration(sess)
		}
		var st struct{ Status string }
		if err := sess.Execute(ctx, "query-status", nil, &st); err != nil {
			errs = append(errs, err)
		} else if st.Status == "postmigrate" || st.Status == "finish-migrate" || g.stopped || g.weStopped && st.Status == "paused" {
			if err := sess.Execute(ctx, "cont", nil, nil); err != nil {
				errs = append(errs, fmt.Errorf("resume the guest: %w", err))
			}
		}
		if err := sess.Execute(ctx, "migrate-set-parameters", s.migrationParams(), nil); err != nil {
			errs = append(errs, err)
		}
		if g.c.tracked {
			if err := s.resetCaptureCaps(ctx, sess); err != nil {
				errs = append(errs, err)
			}
		}
	}
	g.stopped, g.weStopped = false, false
	if len(errs) == 0 {
		s.unmarkCut()
	}
	if g.sub != nil {
		g.sub.Close()
	}
	if g.cap != nil {
		g.cap.abort()
	}
	g.c.unscan()
	errs = append(errs, g.c.close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("livecut: abort group cut %d: %w", g.c.gen, err)
	}
	return nil
}
