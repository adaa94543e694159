package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/sender"
)

// groupRun joins the epochs of a group's members on this host: each
// member's sender asks its source for a snapshot when its epoch begins;
// once every member has asked, one group cut serves them all, each
// snapshot tagged with the same cut. A member whose epoch is still being
// sent holds the group's next cut back, so the group cuts as often as its
// slowest member sends. An aborted cut is retried (after the group's
// RetryAfter) while the members wait.
type groupRun struct {
	o       groupcut.Options
	leader  *groupcut.Leader
	members map[string]GroupMember
	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error
	log     *slog.Logger

	mu      sync.Mutex
	waiting map[string]chan groupSnap
	running bool
}

type groupSnap struct {
	snap *sender.Snapshot
	err  error
}

func newGroupRun(o groupcut.Options, now func() time.Time, sleep func(context.Context, time.Duration) error, log *slog.Logger) *groupRun {
	// Cut numbers keep increasing across restarts as long as the clock
	// does: a restarted leader starts above any number it used before.
	return &groupRun{o: o, leader: groupcut.NewLeader(o, uint64(now().UnixMilli())), members: map[string]GroupMember{},
		now: now, sleep: sleep, log: log.With("group", o.Name), waiting: map[string]chan groupSnap{}}
}

// source is member vm's sender.Source.
func (g *groupRun) source(vm string) sender.Source { return groupSource{g, vm} }

type groupSource struct {
	g  *groupRun
	vm string
}

func (s groupSource) Snapshot(ctx context.Context) (*sender.Snapshot, error) {
	return s.g.snapshot(ctx, s.vm)
}

func (g *groupRun) snapshot(ctx context.Context, vm string) (*sender.Snapshot, error) {
	ch := make(chan groupSnap, 1)
	g.mu.Lock()
	g.waiting[vm] = ch
	var batch map[string]chan groupSnap
	if !g.running && len(g.waiting) == len(g.o.Members) {
		batch, g.waiting, g.running = g.waiting, map[string]chan groupSnap{}, true
	}
	g.mu.Unlock()
	if batch != nil {
		go g.cut(ctx, batch)
	}
	select {
	case r := <-ch:
		return r.snap, r.err
	case <-ctx.Done():
		g.mu.Lock()
		if g.waiting[vm] == ch {
			delete(g.waiting, vm)
			g.mu.Unlock()
		} else {
			g.mu.Unlock()
			// Taken by a cut in progress: its snapshot is released when
			// it comes.
			go func() {
				if r := <-ch; r.snap != nil {
					r.snap.Close()
				}
			}()
		}
		return nil, ctx.Err()
	}
}

// cut runs group cuts until one commits (or ctx ends) and hands each
// waiting member its snapshot.
func (g *groupRun) cut(ctx context.Context, batch map[string]chan groupSnap) {
	defer func() {
		g.mu.Lock()
		g.running = false
		g.mu.Unlock()
	}()
	for {
		if wait := g.leader.RetryAt().Sub(g.now()); wait > 0 {
			if err := g.sleep(ctx, wait); err != nil {
				break
			}
		}
		res, err := CutGroup(ctx, g.o, g.leader, g.members, g.now, g.log)
		if err == nil {
			g.log.Info("group cut", "cut", res.Tag.Cut, "members", len(res.Snapshots))
			for vm, ch := range batch {
				ch <- groupSnap{snap: res.Snapshots[vm]}
			}
			return
		}
		if errors.Is(err, groupcut.ErrBusy) && ctx.Err() == nil {
			continue // its retry time has not come yet
		}
		if ctx.Err() != nil || !errors.Is(err, ErrGroupCutAborted) {
			for _, ch := range batch {
				ch <- groupSnap{err: fmt.Errorf("group %s: %w", g.o.Name, err)}
			}
			return
		}
		g.log.Warn("group cut aborted; every guest runs; retrying", "err", err, "retry_after", g.o.RetryAfter)
	}
	for _, ch := range batch {
		ch <- groupSnap{err: fmt.Errorf("group %s: %w", g.o.Name, ctx.Err())}
	}
}
