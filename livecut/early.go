package livecut

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/drsync/drsync/qmp"
)

// Early backup jobs take the disks' transaction out of a background cut's
// pause. A backup job's fleecing view is the disk as it was when the job
// started; started before the stop, that is the disk at the stop as long
// as the guest wrote nothing in between. The job's copy-before-write
// filter copies a block into the fleecing node before the guest's first
// write to it, and nothing else writes that node, so a write threshold of
// one byte on it fires (BLOCK_WRITE_THRESHOLD) at the guest's first write
// after the job started:
//
//	blockdev-add drsync-f<gen>-<i>             guest running
//	block-set-write-threshold f<gen>-<i>, 1    guest running
//	transaction: blockdev-backup → f<gen>-<i>  guest running: early jobs
//	stop                                       STOP: the cut's instant
//	  no BLOCK_WRITE_THRESHOLD before the reply (or, with a monitor that
//	  does not order events and replies, every early job's offset 0):
//	  the early views are the cut's (DiskFreeze "early")
//	  one came: the guest wrote after the jobs started; while it is
//	  stopped the cut adds drsync-l<gen>-<i> and starts jobs into them,
//	  stacked on the early ones, which go with the cut (DiskFreeze "late")
//
// QEMU sends an event before the reply of any command that follows it,
// and the write a stop drains queues its event before the stop's reply.
// A monitor that may deliver events after later replies (libvirt's
// passthrough) cannot say "none came" that way; its cuts ask instead,
// the guest stopped: a job's progress (query-block-jobs' offset) counts
// the bytes its filter copied, none unless the guest wrote. That costs a
// round trip in the pause, still less than the transaction. Cuts start
// their jobs while stopped (DiskFreeze "stopped") while early jobs keep
// being overtaken (earlyBackoff). The late nodes are added only when
// needed, and only after the early jobs started: a node backed by the
// disk when a job's filter goes in above it is moved onto the filter,
// which then cannot take another job.

// How a cut's backup jobs started (CutStats.DiskFreeze).
const (
	FreezeStopped = "stopped" // while the guest was stopped
	FreezeEarly   = "early"   // before the stop, and the guest wrote nothing until it
	FreezeLate    = "late"    // before the stop, overtaken by a write: again while stopped
)

// eventOrder is what a Monitor says when it delivers every event before
// the reply of any command QEMU answered after sending it (qmp.Session
// does; libvirt's passthrough does not promise it).
type eventOrder interface {
	EventsBeforeReplies() bool
}

// earlyBackoff decides whether a cut tries early jobs: after a cut whose
// early jobs a write overtook, the next 1, 3, 7 … 63 cuts (doubling while
// it keeps happening) start theirs while stopped. A guest that writes
// its disks all the time would otherwise pay the late path's extra node
// in every pause. It knows no time and no QEMU.
type earlyBackoff struct {
	skip   int // cuts left to start their jobs while stopped
	streak int // overtaken early cuts in a row
}

const maxEarlyStreak = 6

// try says whether this cut tries early jobs, and counts a skipped one.
func (b *earlyBackoff) try() bool {
	if b.skip > 0 {
		b.skip--
		return false
	}
	return true
}

// result records whether a cut's early jobs were overtaken by a write.
func (b *earlyBackoff) result(overtaken bool) {
	if !overtaken {
		b.streak = 0
		return
	}
	b.streak = min(b.streak+1, maxEarlyStreak)
	b.skip = 1<<b.streak - 1
}

// ordered says whether sess delivers events before later replies.
func ordered(sess Monitor) bool {
	o, ok := sess.(eventOrder)
	return ok && o.EventsBeforeReplies()
}

// tryEarly says whether the background cut c starts its backup jobs
// before the stop, and if so prepares the late path's overlay files now:
// copies of the early ones, which QEMU has not opened yet (cheaper than
// another qemu-img, and ready before the pause that may need them).
func (c *cut) tryEarly() error {
	s := c.s
	if s.earlyOff || !s.early.try() {
		return nil
	}
	for i, f := range c.files {
		late := lateOverlayPath(s.o.WorkDir, c.gen, i)
		c.lateFiles = append(c.lateFiles, late)
		if err := copyFile(f, late); err != nil {
			return fmt.Errorf("spare fleecing overlay: %w", err)
		}
	}
	c.early = true
	return nil
}

// armEarly subscribes to the write thresholds and sets one of one byte on
// each fleecing node, before any job can write there. A QEMU that refuses
// the threshold gets stopped jobs from then on. A monitor that does not
// order events and replies needs none (overtaken asks the jobs).
func (c *cut) armEarly(ctx context.Context, sess Monitor) error {
	if !c.early || !ordered(sess) {
		return nil
	}
	c.thr = sess.Subscribe("BLOCK_WRITE_THRESHOLD")
	for _, n := range c.nodes {
		err := sess.Execute(ctx, "block-set-write-threshold", map[string]any{"node-name": n, "write-threshold": 1}, nil)
		var ce *qmp.CommandError
		if errors.As(err, &ce) {
			c.s.earlyOff = true
			c.early = false
			c.s.log.Warn("QEMU refuses write thresholds on the fleecing nodes; cuts start their backup jobs while the guest is stopped", "err", err)
			return nil
		}
		if err != nil {
			return fmt.Errorf("write threshold on %s: %w", n, err)
		}
	}
	return nil
}

// beforeStop is a background cut's last step with the guest running:
// an early cut starts its backup jobs into the fleecing nodes, as close
// to the stop as can be (a write in between makes the pause longer), and
// then Options.BeforeStop runs.
func (c *cut) beforeStop(ctx context.Context, sess Monitor) error {
	if c.early {
		tx := time.Now()
		err := c.startJobs(ctx, sess, nil, false, c.nodes, backupJob)
		c.txTime = time.Since(tx)
		if err != nil {
			return fmt.Errorf("livecut: %w: %w", err, ErrCutFailed)
		}
	}
	if c.s.o.BeforeStop != nil {
		c.s.o.BeforeStop(ctx, sess)
	}
	return nil
}

// overtaken says whether the guest wrote its disks after the early jobs
// started, the stop's reply in: a BLOCK_WRITE_THRESHOLD of one of the
// cut's fleecing nodes queued by now (it does not wait), or, without
// ordered events, an early job that copied something. A failed query
// says overtaken: the late path is right either way.
func (c *cut) overtaken(ctx context.Context, sess Monitor) bool {
	if c.thr == nil {
		var jobs []jobProgress
		if err := sess.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
			c.s.log.Warn("could not ask the early backup jobs whether the guest wrote its disks; the cut starts late ones", "err", err)
			return true
		}
		for i := range c.s.o.Disks {
			id := backupJob(c.gen, i)
			j := slices.IndexFunc(jobs, func(j jobProgress) bool { return j.Device == id })
			if j < 0 || jobs[j].Offset > 0 {
				return true
			}
		}
		return false
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for {
		e, err := c.thr.Next(done)
		if err != nil {
			return false
		}
		for _, n := range c.nodes {
			if e.Str("node-name") == n {
				return true
			}
		}
	}
}

// jobProgress is a block job as query-block-jobs tells it: a backup
// job's offset counts what its filter copied.
type jobProgress struct {
	Device string `json:"device"`
	Offset int64  `json:"offset"`
}

// freezeLate is the freeze of a cut whose early jobs a write overtook,
// the guest stopped: new fleecing nodes, and backup jobs into them
// stacked on the early ones. The late nodes become the cut's views; the
// early ones stay until the cut is torn down.
func (c *cut) freezeLate(ctx context.Context, sess Monitor) error {
	t0 := time.Now()
	var late []string
	defer func() { c.spare = append(c.spare, late...) }()
	if err := c.addNodes(ctx, sess, "late fleecing node", lateFleeceNode, c.lateFiles, &late); err != nil {
		return err
	}
	c.fleeceTime = time.Since(t0)
	tx := time.Now()
	err := c.startJobs(ctx, sess, nil, false, late, lateBackupJob)
	c.txTime = time.Since(tx)
	if err != nil {
		return err
	}
	// The late views are the cut's; the early nodes are torn down with it.
	c.nodes, late = late, c.nodes
	return nil
}

// copyFile copies from to a new file to, with from's permissions (those
// qemu-img gave it, which QEMU opens it with).
func copyFile(from, to string) (err error) {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	_, err = io.Copy(out, in)
	return err
}
