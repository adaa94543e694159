package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/vmspec"
)

// GroupSteps is one VM's cut in progress for its consistency group, as
// the capture path takes it in steps (livecut.GroupCut, with all of RAM
// migrated or, for a tracked guest, the written pages copied; any capture
// path that can hold a guest stopped with its cut taken fits).
type GroupSteps interface {
	WaitConverged(ctx context.Context) error
	Stop(ctx context.Context) error
	Resume(ctx context.Context, tag *vmspec.GroupCut) (*sender.Snapshot, error)
	Abort() error
}

// GroupMember starts a member's cut: the capture begins while the guest
// runs.
type GroupMember func(ctx context.Context) (GroupSteps, error)

// GroupCutResult is one group cut run on this host.
type GroupCutResult struct {
	groupcut.Result
	// Snapshots are the members' cuts, tagged, for a committed cut; the
	// caller sends (and closes) each.
	Snapshots map[string]*sender.Snapshot
	Warnings  []string
}

// ErrGroupCutAborted marks a group cut that ended without a group point.
var ErrGroupCutAborted = errors.New("group cut aborted")

// Remote carries a group cut's messages to and from members on other
// hosts (a leader's followers).
type Remote interface {
	Has(member string) bool
	Send(m groupcut.Msg)       // best effort: a lost message is a silent member
	Recv() <-chan groupcut.Msg // the members' answers
}

// memberReport is what a member's own step reports.
type memberReport struct {
	member string
	msg    groupcut.Msg
	snap   *sender.Snapshot
}

// runMemberSteps runs member name's actions one after the other on its
// VM, reporting each to reports; tag gives the committed cut's tag when a
// Resume runs. It ends when actions is closed.
func runMemberSteps(ctx context.Context, o groupcut.Options, name string, start GroupMember, actions <-chan groupcut.Action, reports chan<- memberReport, tag func() *vmspec.GroupCut, log *slog.Logger) {
	var steps GroupSteps
	for a := range actions {
		r := memberReport{member: name, msg: groupcut.Msg{Cut: a.Cut, Member: name}}
		fail := func(err error) { r.msg.Kind, r.msg.Reason = groupcut.Failed, err.Error() }
		switch a.Kind {
		case groupcut.Prepare:
			actx, cancel := context.WithTimeout(ctx, o.PrepareTimeout)
			var err error
			if steps, err = start(actx); err != nil {
				fail(err)
			} else if err := steps.WaitConverged(actx); err != nil {
				fail(err)
			} else {
				r.msg.Kind = groupcut.Converged
			}
			cancel()
		case groupcut.Stop:
			actx, cancel := context.WithTimeout(ctx, o.StepTimeout)
			if steps == nil {
				fail(errors.New("stop without a prepared cut"))
			} else if err := steps.Stop(actx); err != nil {
				fail(err)
			} else {
				r.msg.Kind = groupcut.Held
			}
			cancel()
		case groupcut.Resume:
			if steps == nil {
				fail(errors.New("resume without a held cut"))
				break
			}
			snap, err := steps.Resume(context.WithoutCancel(ctx), tag())
			if err != nil {
				fail(err)
			} else {
				r.msg.Kind, r.snap = groupcut.Resumed, snap
			}
			steps = nil
		case groupcut.Abort:
			r.msg.Kind = groupcut.Aborted
			if steps != nil {
				if err := steps.Abort(); err != nil {
					log.Warn("aborting a member's group cut", "vm", name, "err", err)
				}
			}
			steps = nil
		}
		reports <- r
	}
}

// CutGroup runs one cut of a group whose members are all on this host
// through the group cut's state machine (package groupcut): every member
// prepares while running, all stop, each takes its cut, and all resume
// once every one holds its cut. A member that fails or hangs aborts the
// cut (ErrGroupCutAborted): every guest resumes, no snapshot is kept.
// Each member's steps run in their own goroutine, one after the other.
func CutGroup(ctx context.Context, o groupcut.Options, l *groupcut.Leader, members map[string]GroupMember, now func() time.Time, log *slog.Logger) (*GroupCutResult, error) {
	return LeadGroupCut(ctx, o, l, members, nil, now, log)
}

// LeadGroupCut is CutGroup with members on other hosts too, reached
// through remote; Snapshots then holds only the local members' cuts.
func LeadGroupCut(ctx context.Context, o groupcut.Options, l *groupcut.Leader, members map[string]GroupMember, remote Remote, now func() time.Time, log *slog.Logger) (*GroupCutResult, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reports := make(chan memberReport, 4*len(o.Members))
	type worker struct {
		m       *groupcut.Member
		actions chan groupcut.Action
	}
	workers := map[string]*worker{}
	busy := 0 // actions handed out and not yet reported
	res := &GroupCutResult{Snapshots: map[string]*sender.Snapshot{}}
	var tagMu sync.Mutex
	var tag *vmspec.GroupCut
	getTag := func() *vmspec.GroupCut { tagMu.Lock(); defer tagMu.Unlock(); return tag }
	for _, name := range o.Members {
		start := members[name]
		if start == nil {
			if remote != nil && remote.Has(name) {
				continue
			}
			return nil, fmt.Errorf("group %s: member %s has no source on this host and no follower: %w", o.Name, name, ErrGroupCutAborted)
		}
		w := &worker{m: groupcut.NewMember(o, name), actions: make(chan groupcut.Action, 16)}
		workers[name] = w
		go runMemberSteps(ctx, o, name, start, w.actions, reports, getTag, log)
	}
	defer func() {
		for _, w := range workers {
			close(w.actions)
		}
	}()
	var recv <-chan groupcut.Msg
	if remote != nil {
		recv = remote.Recv()
	}
	var toMembers []groupcut.Msg
	leaderOut := func(out groupcut.Output) {
		toMembers = append(toMembers, out.Send...)
		if out.Warn != "" {
			res.Warnings = append(res.Warnings, out.Warn)
			log.Warn("group cut", "group", o.Name, "warning", out.Warn)
		}
		if out.Done != nil {
			res.Result = *out.Done
			if out.Done.Committed {
				t := out.Done.Tag
				tagMu.Lock()
				tag = &t
				tagMu.Unlock()
			}
		}
	}
	var toLeader []groupcut.Msg
	memberOut := func(w *worker, out groupcut.MemberOutput) {
		for _, a := range out.Do {
			busy++
			w.actions <- a
		}
		toLeader = append(toLeader, out.Send...)
	}
	out, err := l.Start(now())
	if err != nil {
		return nil, err
	}
	leaderOut(out)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		// Local messages travel in memory: deliver until quiet.
		for len(toMembers)+len(toLeader) > 0 {
			msgs := toMembers
			toMembers = nil
			for _, m := range msgs {
				if w := workers[m.Member]; w != nil {
					memberOut(w, w.m.Receive(now(), m))
				} else if remote != nil {
					remote.Send(m)
				}
			}
			msgs = toLeader
			toLeader = nil
			for _, m := range msgs {
				leaderOut(l.Receive(now(), m))
			}
		}
		if !l.Busy() && busy == 0 {
			break
		}
		next := l.Deadline()
		for _, w := range workers {
			if d := w.m.Deadline(); !d.IsZero() && (next.IsZero() || d.Before(next)) {
				next = d
			}
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(now()), 0) + time.Millisecond
		}
		timer.Reset(wait)
		select {
		case r := <-reports:
			busy--
			if r.snap != nil {
				res.Snapshots[r.member] = r.snap
			}
			memberOut(workers[r.member], workers[r.member].m.Local(now(), r.msg))
		case m := <-recv:
			leaderOut(l.Receive(now(), m))
		case <-timer.C:
			leaderOut(l.Tick(now()))
			for _, w := range workers {
				memberOut(w, w.m.Tick(now()))
			}
		}
	}
	if !res.Committed || len(res.Snapshots) != len(workers) {
		for _, s := range res.Snapshots {
			s.Close()
		}
		res.Snapshots = nil
		reason := res.Reason
		if reason == "" {
			reason = fmt.Sprintf("members dropped their part: %v", res.Warnings)
		}
		return res, fmt.Errorf("group %s cut %d: %s: %w", o.Name, res.Tag.Cut, reason, ErrGroupCutAborted)
	}
	return res, nil
}

// groupMember takes a live VM's cuts in steps for its group.
func groupMember(ls *livecut.Source) GroupMember {
	return func(ctx context.Context) (GroupSteps, error) {
		g, err := ls.PrepareGroupCut(ctx)
		if err != nil {
			return nil, err
		}
		return g, nil
	}
}

// validateGroups checks that each group's local members are live VMs of
// o, each in one group. A group spanning hosts needs the leader and
// follower channel, which this agent does not run.
func (o *Options) validateGroups() error {
	vms := map[string]*VM{}
	for i := range o.VMs {
		vms[o.VMs[i].Name] = &o.VMs[i]
	}
	in := map[string]string{}
	for i := range o.Groups {
		g := &o.Groups[i]
		if err := g.Validate(); err != nil {
			return err
		}
		if g.Role() != groupcut.Alone && o.GroupIdentity == nil {
			return fmt.Errorf("group %s: members on other hosts: no identity to talk to the group's other senders", g.Name)
		}
		if o.Final {
			return fmt.Errorf("group %s: a switch-back's final epoch is cut per VM, not by group", g.Name)
		}
		for _, m := range g.Local {
			v := vms[m]
			if v == nil {
				return fmt.Errorf("group %s: member %s is not a VM of this sender", g.Name, m)
			}
			if v.Live == nil {
				return fmt.Errorf("group %s: member %s is not a running guest (live)", g.Name, m)
			}
			if v.Pacing.Mode == Scheduled || v.Pacing.Adaptive() {
				// Its cuts are the group's: two plans cannot both hold.
				return fmt.Errorf("group %s: member %s has its own schedule or rpo_target: the group's rpo paces its cuts; leave them out", g.Name, m)
			}
			if other, ok := in[m]; ok {
				return fmt.Errorf("vm %s is in groups %s and %s: a VM belongs to at most one group", m, other, g.Name)
			}
			in[m] = g.Name
		}
	}
	return nil
}

// setupGroups prepares each group's coordination: a group led here (with
// followers, a listener for them), or followed. The returned function
// starts following, once the members' sources are set up.
func (a *Agent) setupGroups() (start func(), err error) {
	o := a.o
	ctx, cancel := context.WithCancel(context.Background())
	var closers []func()
	a.groupStop = func() {
		cancel()
		for _, c := range closers {
			c()
		}
	}
	var follows []*groupFollow
	for _, g := range o.Groups {
		switch g.Role() {
		case groupcut.Following:
			f := newGroupFollow(g, o.Now, o.Sleep, o.Logger)
			for _, m := range g.Local {
				a.follows[m] = f
			}
			follows = append(follows, f)
			continue
		}
		run := newGroupRun(g, o.Now, o.Sleep, o.Logger)
		if g.Role() == groupcut.Leading {
			ln, err := transport.Listen(g.Listen, tlsid.ServerTLS(*o.GroupIdentity, tlsid.Trust{Fingerprints: g.Peers}), o.GroupTransport)
			if err != nil {
				a.groupStop()
				return nil, &SetupError{g.Local[0], fmt.Errorf("group %s: listen for its followers on %s: %w", g.Name, g.Listen, err)}
			}
			closers = append(closers, func() { ln.Close() })
			fl := NewFollowers(ctx, g, ln, o.Logger)
			fl.setEpochSink(run.remoteCommitted)
			run.remote = fl
		}
		for _, m := range g.Local {
			a.groups[m] = run
		}
	}
	return func() {
		for _, f := range follows {
			tlsConf := tlsid.ClientTLS(*o.GroupIdentity, tlsid.Trust{Fingerprints: f.o.Peers})
			go f.run(ctx, func(ctx context.Context) (io.ReadWriter, func(), error) {
				c, err := transport.Dial(ctx, f.o.Leader, tlsConf, o.GroupTransport)
				if err != nil {
					return nil, nil, err
				}
				s, err := c.OpenStream(ctx)
				if err != nil {
					c.Close(0, "no stream")
					return nil, nil, err
				}
				return s, func() { c.Close(0, "follower done") }, nil
			})
		}
	}, nil
}
