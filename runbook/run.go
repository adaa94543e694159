package runbook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Ready is what a preflight learned of a VM's replica.
type Ready struct {
	Epoch uint64
	Cut   time.Time
	// Resumed is set when the replica was already taken over by this
	// runbook (an interrupted run).
	Resumed bool
	// The VM's disk overlays an earlier run left, by state (not looked
	// at in a drill): see Prior.
	Written, InUse, Unreadable []string
}

// Started is a VM brought up by Env.Start.
type Started struct {
	PID   int
	QMP   string
	Epoch uint64
	Cut   time.Time
	Took  time.Duration // from the start of the step until the guest ran
	Boot  bool          // booted cold from its overlays (Env.Boot)
}

// Env is everything a run does to the world.
type Env interface {
	// Preflight checks that vm can be brought up, changing nothing.
	Preflight(ctx context.Context, rb *Runbook, vm *VM) (Ready, error)
	Hook(ctx context.Context, rb *Runbook, h *Hook) error
	Start(ctx context.Context, rb *Runbook, vm *VM) (Started, error)
	// Boot starts vm cold from the disk overlays an earlier run left,
	// with no memory state.
	Boot(ctx context.Context, rb *Runbook, vm *VM) (Started, error)
	// Discard moves aside what an earlier run left of vm (its work
	// directory) and says where to; it deletes nothing.
	Discard(ctx context.Context, rb *Runbook, vm *VM) (string, error)
	// Alive reports whether a VM an earlier run started still runs.
	Alive(ctx context.Context, s Started) bool
	Check(ctx context.Context, vm *VM, c *Check, s Started) error
	// Stop ends a VM a drill started and removes what it ran from.
	Stop(ctx context.Context, rb *Runbook, vm *VM, s Started) error
}

// Options of a run.
type Options struct {
	DryRun bool
	// Hold keeps a drill's VMs running this long after their checks
	// passed (for manual tests), or until ctx ends, before the teardown.
	Hold time.Duration
	Out  io.Writer // the plan and progress, for the operator
	Now  func() time.Time
	// DiscardDRWrites names the VMs that start over from their replicas,
	// what they wrote at the DR site moved aside. Named one by one, so
	// that no VM's DR writes are put away by a flag meant for another.
	DiscardDRWrites []string
}

// ErrPreflight marks a runbook refused before anything started.
var ErrPreflight = errors.New("runbook refused before anything started")

// Run executes rb, skipping what log says earlier runs finished. Every VM
// is preflighted first: one that cannot come up stops the run before any
// hook or VM starts. With DryRun, Run prints the plan and preflights only.
func Run(ctx context.Context, rb *Runbook, log *Log, env Env, o Options) error {
	out := o.Out
	if out == nil {
		out = io.Discard
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	ready := map[string]Ready{}
	actions := map[string]Action{}
	priors := map[string]Prior{}
	var problems []string
	for _, name := range o.DiscardDRWrites {
		if rb.vm(name) == nil {
			problems = append(problems, fmt.Sprintf("%s %s: the runbook has no such VM", DiscardFlag, name))
		} else if rb.Drill {
			problems = append(problems, fmt.Sprintf("%s %s: a drill never touches a failover's overlays", DiscardFlag, name))
		}
	}
	for i := range rb.VMs {
		v := &rb.VMs[i]
		r, err := env.Preflight(ctx, rb, v)
		if err != nil {
			problems = append(problems, fmt.Sprintf("vm %s: %v", v.Name, err))
			continue
		}
		ready[v.Name] = r
		if rb.Drill {
			continue // a drill's copies are its own, made afresh
		}
		p := Prior{VM: v.Name, Written: r.Written, InUse: r.InUse, Unreadable: r.Unreadable}
		if rec, ok := log.Done("start:" + v.Name); ok {
			p.Logged, p.PID, p.Epoch = true, rec.PID, rec.Epoch
			p.Alive = env.Alive(ctx, Started{PID: rec.PID, QMP: rec.QMP, Epoch: rec.Epoch, Cut: rec.Cut})
		}
		var point uint64
		if e, before := rb.point(v.Name); e != 0 || !before.IsZero() {
			point = r.Epoch
		}
		a, err := Decide(p, point, slices.Contains(o.DiscardDRWrites, v.Name))
		if err != nil {
			problems = append(problems, fmt.Sprintf("vm %s: %v", v.Name, err))
			continue
		}
		actions[v.Name], priors[v.Name] = a, p
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w:\n  %s", ErrPreflight, strings.Join(problems, "\n  "))
	}

	steps := rb.Steps()
	kind := "runbook"
	if rb.Drill {
		kind = "drill of runbook"
	}
	fmt.Fprintf(out, "%s %q: %d steps\n", kind, rb.Name, len(steps))
	for _, s := range steps {
		state := "to do"
		if _, ok := log.Done(s.ID); ok {
			state = "done earlier"
		}
		detail := ""
		switch s.Kind {
		case StepStart:
			r := ready[s.VM]
			detail = fmt.Sprintf("group %s, from epoch %d cut %s (%s old)", s.Group, r.Epoch, r.Cut.UTC().Format(time.RFC3339), now().Sub(r.Cut).Round(time.Second))
			switch actions[s.VM] {
			case ActKeep:
				state = "running"
				detail = fmt.Sprintf("group %s, running (pid %d) from epoch %d", s.Group, priors[s.VM].PID, priors[s.VM].Epoch)
			case ActBoot:
				state = "boot"
				detail = fmt.Sprintf("group %s, boots from its disk overlays (no memory state): %s", s.Group, strings.Join(priors[s.VM].Written, ", "))
			case ActDiscard:
				state = "start over"
				detail += "; what it wrote at the DR site is moved aside"
			}
		case StepHook:
			detail = strings.Join(s.Hook.Command, " ")
		case StepCheck:
			detail = describeCheck(s.Check)
		}
		fmt.Fprintf(out, "  %-12s %-28s %s\n", state, s.ID, detail)
	}
	if o.DryRun {
		fmt.Fprintln(out, "dry run: every replica checked; nothing started")
		return nil
	}

	started := map[string]Started{}
	if rb.Drill {
		// A drill leaves nothing behind, whether it passed or not.
		defer func() {
			for name, st := range started {
				if err := env.Stop(context.WithoutCancel(ctx), rb, rb.vm(name), st); err != nil {
					fmt.Fprintf(out, "drill: stop %s: %v\n", name, err)
				} else {
					fmt.Fprintf(out, "drill: %s stopped and its copy removed\n", name)
				}
			}
		}()
	}
	for _, s := range steps {
		rec, done := log.Done(s.ID)
		if s.Kind == StepStart {
			// What earlier runs left decides, not whether the step is done:
			// the overlays may hold writes of a VM whose start was never
			// logged (a run killed while the guest ran).
			switch actions[s.VM] {
			case ActKeep:
				started[s.VM] = Started{PID: rec.PID, QMP: rec.QMP, Epoch: rec.Epoch, Cut: rec.Cut}
				fmt.Fprintf(out, "%s: still running from an earlier run (pid %d)\n", s.ID, rec.PID)
				continue
			case ActBoot:
				p := priors[s.VM]
				from := "the replica"
				if p.Epoch != 0 {
					from = fmt.Sprintf("epoch %d", p.Epoch)
				}
				fmt.Fprintf(out, "%s: the VM an earlier run started is gone; its disk overlays hold what it wrote at the DR site (%s), so it boots from its disk overlays: a cold boot with no memory state (the replica's memory of %s is older than these disks and is not loaded); %s would start over from the replica instead\n",
					s.ID, strings.Join(p.Written, ", "), from, DiscardFlag+" "+s.VM)
			case ActDiscard:
				fmt.Fprintf(out, "%s: %s %s: starting over from the replica's epoch %d\n", s.ID, DiscardFlag, s.VM, ready[s.VM].Epoch)
			case ActResume:
				if done {
					fmt.Fprintf(out, "%s: the VM an earlier run started is gone and its disk overlays hold no writes; starting it again from epoch %d\n", s.ID, ready[s.VM].Epoch)
				}
			}
			done = false
		}
		if done {
			continue
		}
		t0 := now()
		r := Record{Step: s.ID, Status: StatusDone}
		var err error
		switch s.Kind {
		case StepHook:
			err = env.Hook(ctx, rb, s.Hook)
		case StepStart:
			var st Started
			switch actions[s.VM] {
			case ActBoot:
				if st, err = env.Boot(ctx, rb, rb.vm(s.VM)); err == nil {
					// The overlays still grew from the earlier run's epoch:
					// a later --epoch is compared with it.
					st.Epoch, st.Cut, st.Boot = priors[s.VM].Epoch, rec.Cut, true
				}
			case ActDiscard:
				var aside string
				if aside, err = env.Discard(ctx, rb, rb.vm(s.VM)); err == nil {
					if aside != "" {
						fmt.Fprintf(out, "%s: what the VM wrote at the DR site is kept in %s\n", s.ID, aside)
					}
					st, err = env.Start(ctx, rb, rb.vm(s.VM))
				}
			default:
				st, err = env.Start(ctx, rb, rb.vm(s.VM))
			}
			if err == nil {
				started[s.VM] = st
				r.PID, r.QMP, r.Epoch, r.Cut, r.Boot = st.PID, st.QMP, st.Epoch, st.Cut, st.Boot
				r.TakeoverMS = float64(st.Took.Microseconds()) / 1000
				r.Detail = fmt.Sprintf("running from epoch %d in %v", st.Epoch, st.Took.Round(time.Millisecond))
				if st.Boot {
					r.Detail = fmt.Sprintf("booted from its disk overlays (no memory state) in %v", st.Took.Round(time.Millisecond))
				}
			}
		case StepCheck:
			st, ok := started[s.VM]
			if !ok {
				rs, _ := log.Done("start:" + s.VM)
				st = Started{PID: rs.PID, QMP: rs.QMP, Epoch: rs.Epoch}
			}
			err = env.Check(ctx, rb.vm(s.VM), s.Check, st)
		}
		r.At = now()
		if err != nil {
			r.Status, r.Detail = StatusFailed, err.Error()
			if lerr := log.Append(r); lerr != nil {
				return errors.Join(fmt.Errorf("step %s: %w", s.ID, err), lerr)
			}
			fmt.Fprintf(out, "%s: FAILED after %v: %v\n", s.ID, now().Sub(t0).Round(time.Millisecond), err)
			return fmt.Errorf("runbook %q stopped at step %s (run it again to continue from there): %w", rb.Name, s.ID, err)
		}
		if err := log.Append(r); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: done in %v %s\n", s.ID, now().Sub(t0).Round(time.Millisecond), r.Detail)
	}
	fmt.Fprintf(out, "%s %q complete\n", kind, rb.Name)
	if rb.Drill && o.Hold > 0 {
		fmt.Fprintf(out, "drill: the VMs stay up for %v (interrupt to end sooner)\n", o.Hold)
		select {
		case <-time.After(o.Hold):
		case <-ctx.Done():
		}
	}
	return nil
}

func describeCheck(c *Check) string {
	switch c.Kind {
	case CheckSerial:
		return fmt.Sprintf("serial %s matches %q within %v", c.File, c.Match, c.Timeout)
	case CheckTCP:
		return fmt.Sprintf("tcp %s accepts within %v", c.Address, c.Timeout)
	}
	return fmt.Sprintf("QEMU reports running within %v", c.Timeout)
}
