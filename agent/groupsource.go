package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/drsync/drsync/epochctl"
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
//
// The group's rpo paces it: once every member has committed its part of
// a group cut (the local ones, and those of followers that report their
// epochs), one controller (epochctl.Group) plans the next cut from their
// summed epochs, and the cut waits for that instant; members ask for
// their next snapshot as soon as they have committed.
type groupRun struct {
	o       groupcut.Options
	leader  *groupcut.Leader
	members map[string]GroupMember
	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error
	log     *slog.Logger
	remote  Remote // a leader's followers; nil when every member is here

	mu      sync.Mutex
	waiting map[string]chan groupSnap
	running bool

	plan     *epochctl.Group                            // created with the first group epoch committed
	parts    map[uint64]map[string]epochctl.Observation // members' parts of group epochs not yet planned from, by cut
	prevCut  map[string]time.Time                       // each local member's previous committed cut
	cutOf    map[string]uint64                          // the group cut each local member's snapshot came from
	lastCut  uint64                                     // the newest committed group cut
	planned  uint64                                     // the group cut the plan was made from
	replan   chan struct{}                              // closed when a plan is made
	next     time.Time                                  // the planned next cut; zero: at once
	interval time.Duration                              // the plan's epoch length
	reason   string                                     // the plan's one line
}

// reporter is a Remote whose members on other hosts report their epochs.
type reporter interface {
	Reports(member string) bool
}

type groupSnap struct {
	snap *sender.Snapshot
	err  error
}

func newGroupRun(o groupcut.Options, now func() time.Time, sleep func(context.Context, time.Duration) error, log *slog.Logger) *groupRun {
	// Cut numbers keep increasing across restarts as long as the clock
	// does: a restarted leader starts above any number it used before.
	return &groupRun{o: o, leader: groupcut.NewLeader(o, uint64(now().UnixMilli())), members: map[string]GroupMember{},
		now: now, sleep: sleep, log: log.With("group", o.Name), waiting: map[string]chan groupSnap{},
		parts: map[uint64]map[string]epochctl.Observation{}, prevCut: map[string]time.Time{}, cutOf: map[string]uint64{}, replan: make(chan struct{})}
}

// observation is a member's committed epoch res, acknowledged at now, as
// the group's controller takes it; prev is the member's previous cut.
func observation(res *sender.Result, prev, now time.Time) epochctl.Observation {
	var interval time.Duration
	if !prev.IsZero() && res.Cut.After(prev) {
		interval = res.Cut.Sub(prev)
	}
	return epochctl.Observation{
		Cut: res.Cut, Committed: now, Interval: interval,
		ChangedBytes: int64(res.DataBytes + res.RefBytes), DedupedBytes: int64(res.RefBytes), WireBytes: int64(res.WireBytes),
		SendTime: res.SendTime, CPUTime: res.CompressTime, Level: epochctl.Level(res.Compression),
	}
}

// committed takes local member vm's committed epoch of a group cut,
// acknowledged at now.
func (g *groupRun) committed(vm string, res *sender.Result, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	obs := observation(res, g.prevCut[vm], now)
	g.prevCut[vm] = res.Cut
	g.addPart(vm, g.cutOf[vm], obs, now)
}

// remoteCommitted takes a follower's report of its member's committed
// epoch of group cut cut, arrived now.
func (g *groupRun) remoteCommitted(vm string, cut uint64, e *peerEpoch) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !slices.Contains(g.o.Members, vm) || slices.Contains(g.o.Local, vm) {
		return
	}
	now := g.now()
	g.addPart(vm, cut, e.observation(now), now)
}

// expected are the members whose epochs the plan waits for: the local
// ones and those on followers that report them. A follower that does not
// (protocol 1, or away) leaves its members' bytes out of the plan.
func (g *groupRun) expected() []string {
	out := slices.Clone(g.o.Local)
	r, _ := g.remote.(reporter)
	for _, m := range g.o.Members {
		if r != nil && !slices.Contains(g.o.Local, m) && r.Reports(m) {
			out = append(out, m)
		}
	}
	return out
}

// addPart records member vm's part of group cut cut. Once every expected
// member's part of it is in, the group's controller observes their sum
// and plans the next cut. Called with g.mu held.
func (g *groupRun) addPart(vm string, cut uint64, obs epochctl.Observation, now time.Time) {
	if cut < g.planned {
		return // a part of a cut planned from already
	}
	if g.parts[cut] == nil {
		g.parts[cut] = map[string]epochctl.Observation{}
	}
	g.parts[cut][vm] = obs
	var parts []epochctl.Observation
	for _, m := range g.expected() {
		p, ok := g.parts[cut][m]
		if !ok {
			return
		}
		parts = append(parts, p)
	}
	for c := range g.parts {
		if c <= cut {
			delete(g.parts, c)
		}
	}
	g.planned = cut
	level := parts[0].Level
	if g.plan == nil {
		// The members' compression is their own: the group plans at it.
		if !level.Valid() {
			level = epochctl.LevelNone
		}
		p, err := epochctl.NewGroup(epochctl.Config{RPOTarget: g.o.RPO, StartLevel: level, Levels: []epochctl.Level{level}})
		if err != nil {
			g.log.Error("group pacing: no controller for the group's rpo; cutting as soon as every member is ready", "err", err)
			return
		}
		g.plan = p
	}
	g.plan.Observe(parts)
	d := g.plan.Decide(now)
	g.next, g.interval, g.reason = d.NextCut, d.Interval, d.Reason
	close(g.replan)
	g.replan = make(chan struct{})
	if d.Breach {
		g.log.Warn("group rpo breach predicted", "plan", d.Reason)
	}
	g.log.Debug("group pacing", "next_cut", d.NextCut, "interval", d.Interval, "plan", d.Reason)
}

// nextCut is when the group's next cut is planned (zero: at once).
func (g *groupRun) nextCut() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.next
}

// waitPlan waits, at most bound, for the plan from the newest committed
// cut while some of its parts are still to come from followers: their
// members ask for the next cut only once they have committed, so the
// wait is mostly free, and the cut then goes by every member's bytes.
func (g *groupRun) waitPlan(ctx context.Context, bound time.Duration) {
	timer := time.NewTimer(bound)
	defer timer.Stop()
	for {
		g.mu.Lock()
		if g.planned >= g.lastCut || len(g.expected()) == len(g.o.Local) {
			g.mu.Unlock()
			return
		}
		ch := g.replan
		g.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			g.log.Warn("group pacing: a follower's epoch report did not come; planning without it", "cut", g.lastCut)
			return
		case <-ctx.Done():
			return
		}
	}
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
	if !g.running && len(g.waiting) == len(g.o.Local) {
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
	g.waitPlan(ctx, g.o.PrepareTimeout)
	if wait := g.nextCut().Sub(g.now()); wait > 0 {
		if err := g.sleep(ctx, wait); err != nil {
			for _, ch := range batch {
				ch <- groupSnap{err: fmt.Errorf("group %s: %w", g.o.Name, err)}
			}
			return
		}
	}
	for {
		if wait := g.leader.RetryAt().Sub(g.now()); wait > 0 {
			if err := g.sleep(ctx, wait); err != nil {
				break
			}
		}
		res, err := LeadGroupCut(ctx, g.o, g.leader, g.members, g.remote, g.now, g.log)
		if err == nil {
			g.log.Info("group cut", "cut", res.Tag.Cut, "members", len(res.Snapshots))
			g.mu.Lock()
			g.lastCut = res.Tag.Cut
			for vm := range batch {
				g.cutOf[vm] = res.Tag.Cut
			}
			g.mu.Unlock()
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
		if !g.leader.RetryAt().After(g.now()) {
			// It did not even start (a follower is not connected): the
			// leader set no retry time, so wait here rather than spin.
			if g.sleep(ctx, g.o.RetryAfter) != nil {
				break
			}
		}
	}
	for _, ch := range batch {
		ch <- groupSnap{err: fmt.Errorf("group %s: %w", g.o.Name, ctx.Err())}
	}
}

// groupFollow is a follower's side of a group spanning hosts: it follows
// the leader (reconnecting when the link fails) and hands each committed
// cut to the member's sender, which waits for it in Snapshot. A member
// prepares a cut only once its sender waits: a sender still sending its
// previous epoch makes the leader's cut wait, then abort at its prepare
// timeout, and the group retries.
type groupFollow struct {
	o       groupcut.Options
	log     *slog.Logger
	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error
	members map[string]GroupMember

	epochs chan MemberEpoch // committed epochs, for the leader's pacing

	mu      sync.Mutex
	waiting map[string]chan groupSnap
	cutOf   map[string]uint64    // the group cut each member's snapshot came from
	prevCut map[string]time.Time // each member's previous committed cut
}

func newGroupFollow(o groupcut.Options, now func() time.Time, sleep func(context.Context, time.Duration) error, log *slog.Logger) *groupFollow {
	return &groupFollow{o: o, log: log.With("group", o.Name), now: now, sleep: sleep, members: map[string]GroupMember{}, waiting: map[string]chan groupSnap{},
		epochs: make(chan MemberEpoch, 16), cutOf: map[string]uint64{}, prevCut: map[string]time.Time{}}
}

// committed reports member vm's committed epoch, acknowledged at now, to
// the leader, whose controller paces the group on every member's bytes.
// A report that finds no room (the leader's link is down) is dropped: the
// leader then plans without it.
func (g *groupFollow) committed(vm string, res *sender.Result, now time.Time) {
	g.mu.Lock()
	e := MemberEpoch{Member: vm, Cut: g.cutOf[vm], Observation: observation(res, g.prevCut[vm], now)}
	g.prevCut[vm] = res.Cut
	g.mu.Unlock()
	select {
	case g.epochs <- e:
	default:
		g.log.Warn("group pacing: an epoch report to the leader is dropped", "vm", vm, "cut", e.Cut)
	}
}

type followSource struct {
	g  *groupFollow
	vm string
}

func (s followSource) Snapshot(ctx context.Context) (*sender.Snapshot, error) {
	ch := make(chan groupSnap, 1)
	s.g.mu.Lock()
	s.g.waiting[s.vm] = ch
	s.g.mu.Unlock()
	select {
	case r := <-ch:
		return r.snap, r.err
	case <-ctx.Done():
		s.g.mu.Lock()
		if s.g.waiting[s.vm] == ch {
			delete(s.g.waiting, s.vm)
		}
		s.g.mu.Unlock()
		return nil, ctx.Err()
	}
}

// member wraps a member's cut so that it starts only once its sender
// waits for a snapshot.
func (g *groupFollow) member(vm string, start GroupMember) GroupMember {
	return func(ctx context.Context) (GroupSteps, error) {
		for {
			g.mu.Lock()
			ready := g.waiting[vm] != nil
			g.mu.Unlock()
			if ready {
				return start(ctx)
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("vm %s: its sender is still busy with the previous epoch: %w", vm, ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}

// deliver hands a committed cut to the member's waiting sender.
func (g *groupFollow) deliver(vm string, snap *sender.Snapshot) {
	g.mu.Lock()
	ch := g.waiting[vm]
	delete(g.waiting, vm)
	if ch != nil && snap.Group != nil {
		g.cutOf[vm] = snap.Group.Cut
	}
	g.mu.Unlock()
	if ch == nil {
		snap.Close()
		return
	}
	ch <- groupSnap{snap: snap}
}

// run follows the leader until ctx ends; dial opens the stream to it.
func (g *groupFollow) run(ctx context.Context, dial func(ctx context.Context) (io.ReadWriter, func(), error)) {
	for ctx.Err() == nil {
		s, closeConn, err := dial(ctx)
		if err == nil {
			g.log.Info("following the group's leader", "leader", g.o.Leader)
			err = FollowGroup(ctx, g.o, s, g.members, g.deliver, g.epochs, g.now, g.log)
			closeConn()
		}
		if ctx.Err() != nil {
			return
		}
		g.log.Warn("the group's leader is unreachable; retrying", "leader", g.o.Leader, "err", err, "retry_after", g.o.RetryAfter)
		if g.sleep(ctx, g.o.RetryAfter) != nil {
			return
		}
	}
}
