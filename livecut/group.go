package livecut

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/vmspec"
)

// A cut for a consistency group is taken in steps, so that every member
// is stopped at one instant and the pauses overlap:
//
//	PrepareGroupCut   overlays, capture socket, cut mark; migrate with a
//	                  downtime limit of 1 ms
//	WaitConverged     until the first full pass is within 3 MiB of its
//	                  end; then drsync stops reading the stream, so QEMU's
//	                  migration thread blocks in its write and cannot
//	                  complete (and stop the guest) by itself while the
//	                  other members converge
//	Stop              stop (QMP), the stream read again at once, downtime
//	                  limit restored: the migration sends the rest and
//	                  completes; then the same freeze as a single cut
//	                  (fleecing nodes, bitmap transaction). The guest stays
//	                  stopped. Its device state records it paused (QEMU
//	                  stores the run state at completion), so a takeover
//	                  of this epoch resumes it with cont, as it does a
//	                  final cut's.
//	Resume            cont, exports: the snapshot, tagged with the group cut
//	Abort             at any step: the migration cancelled or the guest
//	                  resumed, everything torn down; the guest runs
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
	migStart  time.Time
	stopAt    time.Time
	completed time.Time
	stopped   bool // the migration completed: the guest waits for cont
	weStopped bool // stop issued: until cont, an abort must resume the guest
	done      bool
	cancel    context.CancelFunc
	ctx       context.Context
}

// PrepareGroupCut starts a cut whose stop the caller decides: the
// migration starts and iterates while the guest runs.
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
	g = &GroupCut{s: s, c: c, sess: sess}
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
	nodes, err := s.nodes(ctx, sess)
	if err != nil {
		return g, fmt.Errorf("livecut: %w", err)
	}
	g.sizes = make([]int64, len(s.o.Disks))
	for i, d := range s.o.Disks {
		for _, n := range nodes {
			if n.NodeName == d.Node {
				g.sizes[i] = n.Image.VirtualSize
			}
		}
		if g.sizes[i] <= 0 {
			return g, fmt.Errorf("livecut: disk %q: node %q is gone from the VM or empty: %w", d.Name, d.Node, ErrDiskNotFound)
		}
		if c.prev != nil && c.prev.tables[sender.TableKey(vmspec.KindDisk, d.Name)] == nil {
			c.prev = nil
		}
	}
	for i := range s.o.Disks {
		f := filepath.Join(s.o.WorkDir, overlayFile(c.gen, i))
		if err := s.createOverlay(ctx, f, g.sizes[i]); err != nil {
			return g, fmt.Errorf("livecut: %w", err)
		}
		c.files = append(c.files, f)
	}
	if g.cap, err = startCapture(filepath.Join(s.o.WorkDir, "mig.sock")); err != nil {
		return g, fmt.Errorf("livecut: %w", err)
	}
	if err := s.markCut(c.gen); err != nil {
		return g, fmt.Errorf("livecut: %w", err)
	}
	if err := s.setIgnoreShared(ctx, sess, false); err != nil { // group cuts migrate all of RAM
		return g, fmt.Errorf("livecut: %w", err)
	}
	g.sub = sess.Subscribe("STOP", "MIGRATION", "SHUTDOWN")
	if s.stoppedPass {
		return g, nil // the migration starts once Stop has stopped the guest
	}
	if err := sess.Execute(ctx, "migrate-set-parameters", map[string]any{"downtime-limit": holdDowntime}, nil); err != nil {
		return g, fmt.Errorf("livecut: %w", err)
	}
	g.migStart = time.Now()
	if err := sess.Execute(ctx, "migrate", map[string]any{"uri": "unix:" + g.cap.path}, nil); err != nil {
		return g, fmt.Errorf("livecut: %w", err)
	}
	return g, nil
}

// WaitConverged returns once the migration's first full pass is nearly
// done: only the end of that pass and what the guest dirtied since are
// left to send. From then on the stream is held (not read), so the
// migration cannot complete, and stop the guest, by itself before Stop:
// QEMU completes once what is left fits in the downtime limit at the
// measured bandwidth, which a guest that dirties little reaches even with
// a limit of 1 ms.
func (g *GroupCut) WaitConverged(ctx context.Context) error {
	if g.s.stoppedPass {
		return nil // nothing runs before the stop
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

// Stop stops the guest at the end of the migration and takes the cut;
// the guest stays stopped until Resume or Abort.
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
	err := sess.Execute(ctx, "stop", nil, nil)
	if err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	g.weStopped = true
	if g.s.stoppedPass {
		// The whole RAM pass runs in Resume, the guest still stopped: it
		// takes seconds, more than a step may, and every member is
		// stopped already, so the cut's instant is this stop.
		for g.stopAt.IsZero() {
			e, err := g.sub.Next(ctx)
			if err != nil {
				return fmt.Errorf("livecut: waiting for the guest to stop: %w", err)
			}
			if e.Name == "STOP" {
				g.stopAt = e.At
			}
		}
		return nil
	}
	if err := sess.Execute(ctx, "migrate-set-parameters", map[string]any{"downtime-limit": defaultDowntime}, nil); err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	return g.complete(ctx)
}

// complete waits for the cut's migration to complete, the guest stopped,
// and freezes the disks.
func (g *GroupCut) complete(ctx context.Context) error {
	sess := g.sess
	for {
		e, err := g.sub.Next(ctx)
		if err != nil {
			return fmt.Errorf("livecut: waiting for the migration to complete: %w", err)
		}
		if e.Name == "SHUTDOWN" {
			return fmt.Errorf("livecut: the VM shut down (%s) during the cut: %w", e.Str("reason"), ErrVMGone)
		}
		if e.Name == "STOP" {
			g.stopAt = e.At
			continue
		}
		st := e.Str("status")
		if st == "completed" {
			g.completed, g.stopped = time.Now(), true
			break
		}
		if st == "failed" || st == "cancelled" {
			return fmt.Errorf("livecut: migration %s: %w", st, ErrCutFailed)
		}
	}
	if err := g.c.freeze(ctx, sess); err != nil {
		return fmt.Errorf("livecut: %w: %w", err, ErrCutFailed)
	}
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
	if s.stoppedPass && g.weStopped && !g.stopped {
		g.migStart = time.Now()
		if err := sess.Execute(g.ctx, "migrate", map[string]any{"uri": "unix:" + g.cap.path}, nil); err != nil {
			return nil, fmt.Errorf("livecut: %w", err)
		}
		if err := g.complete(g.ctx); err != nil {
			return nil, err
		}
	}
	if !g.stopped {
		return nil, errors.New("livecut: group cut resumed before it stopped")
	}
	if err := sess.Execute(context.WithoutCancel(ctx), "cont", nil, nil); err != nil {
		return nil, fmt.Errorf("livecut: resume the guest: %w", err)
	}
	resumed := time.Now()
	g.stopped, g.weStopped = false, false
	s.unmarkCut()
	var mig struct {
		Downtime int64 `json:"downtime"`
	}
	if err := sess.Execute(ctx, "query-migrate", nil, &mig); err != nil {
		return nil, fmt.Errorf("livecut: %w", err)
	}
	res, err := g.cap.wait(g.ctx)
	c.flat = g.cap.flat
	g.cap = nil
	if err != nil {
		return nil, fmt.Errorf("livecut: %w", err)
	}
	stats := CutStats{Freeze: resumed.Sub(g.completed), Downtime: time.Duration(mig.Downtime) * time.Millisecond, Capture: time.Since(g.migStart), StreamBytes: res.Stats.StreamBytes}
	if !g.stopAt.IsZero() {
		stats.Pause = resumed.Sub(g.stopAt)
	}
	snap = &sender.Snapshot{Cut: g.stopAt, DeviceState: res.Skeleton, Pause: stats.Pause, HypervisorDowntime: stats.Downtime, Group: tag}
	if _, err := c.exportTargets(ctx, sess, snap, g.sizes, stats); err != nil {
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
		if !g.stopped {
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
	errs = append(errs, g.c.close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("livecut: abort group cut %d: %w", g.c.gen, err)
	}
	return nil
}
