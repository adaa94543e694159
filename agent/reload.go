package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"slices"

	"github.com/drsync/drsync/internal/units"
)

// ErrNeedsRestart marks a reload that changes what only a restart can:
// the receiver, the sender's identity, once or final mode, the retries.
var ErrNeedsRestart = errors.New("this change needs a restart of the sender")

// Reload applies o in place of the options the agent runs with, without
// dropping an epoch in flight. o is validated first: a reload that cannot
// be applied is refused with its error, and the agent is left as it was.
//
// What applies: the bandwidth cap at once (every connection's next write);
// a VM's pacing from its next epoch decision; a VM removed stops after its
// epoch in flight commits, or at once between epochs; a VM added starts
// (its guest guarded first if live); a VM otherwise changed is replaced
// after its epoch in flight, as if removed and added. The dialer, the
// receiver and the identity are the running agent's: changing Receiver or
// Fingerprint is refused as ErrNeedsRestart.
func (a *Agent) Reload(o Options) error {
	if err := o.Validate(); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	cur := a.o
	if a.ended {
		return errors.New("reload: the agent has stopped")
	}
	switch {
	case cur.Once || o.Once:
		return fmt.Errorf("reload: an agent sending one epoch per VM reads its options once: %w", ErrNeedsRestart)
	case o.Final != cur.Final || o.Retries != cur.Retries:
		return fmt.Errorf("reload: final epoch or retries changed: %w", ErrNeedsRestart)
	case o.Receiver != cur.Receiver:
		return fmt.Errorf("reload: receiver %s → %s: %w", cur.Receiver, o.Receiver, ErrNeedsRestart)
	case o.Fingerprint != cur.Fingerprint:
		return fmt.Errorf("reload: the sender's identity changed (%s → %s): %w", cur.Fingerprint, o.Fingerprint, ErrNeedsRestart)
	case o.BandwidthCap != cur.BandwidthCap && cur.Cap == nil:
		return fmt.Errorf("reload: the bandwidth cap cannot change: the dialer was not built with an adjustable cap: %w", ErrNeedsRestart)
	}
	d := diffVMs(cur.VMs, o.VMs)
	for _, name := range append(slices.Clone(d.removed), d.changed...) {
		if a.pending[name] {
			return fmt.Errorf("reload: vm %s is still being replaced (waiting for its epoch in flight); reload again once it runs", name)
		}
	}

	// Set up the VMs added first: one that cannot be set up refuses the
	// reload before anything changed. A VM whose old loop still ends (it
	// was removed by an earlier reload) starts later, like a changed one.
	var added []*vmLoop
	var guarded []GuardVM
	var late []VM
	for _, v := range d.added {
		if a.loopOf(v.Name) != nil {
			late = append(late, v)
			continue
		}
		l, err := a.newVMLoop(v, o.CapShare)
		if err != nil {
			for _, l := range added {
				l.close()
			}
			return fmt.Errorf("reload: %w", err)
		}
		added = append(added, l)
		if v.Live != nil {
			guarded = append(guarded, guardVM(v))
		}
	}
	for _, name := range d.changed {
		if v := vmNamed(o.VMs, name); v.Live != nil {
			guarded = append(guarded, guardVM(v))
		}
	}
	if len(guarded) > 0 && cur.StartGuard != nil {
		if err := cur.StartGuard(guarded); err != nil {
			for _, l := range added {
				l.close()
			}
			return fmt.Errorf("reload: %w", err)
		}
	}

	log := cur.Logger
	if o.BandwidthCap != cur.BandwidthCap {
		if err := cur.Cap.Set(o.BandwidthCap); err != nil {
			// Validate checked the rate: not reached.
			log.Error("reload: bandwidth cap", "err", err)
		} else {
			log.Info(fmt.Sprintf("reload: bandwidth cap %s → %s", capString(cur.BandwidthCap), capString(o.BandwidthCap)))
		}
	}
	for _, name := range d.removed {
		if l := a.loopOf(name); l != nil {
			l.retire()
			go a.reap(l)
		}
		log.Info(fmt.Sprintf("reload: vm %s removed: it stops after its epoch in flight", name))
	}
	for _, name := range d.changed {
		old := a.loopOf(name)
		v := vmNamed(o.VMs, name)
		if old == nil {
			// Its loop already ended (a permanent failure): start afresh.
			late = append(late, v)
			continue
		}
		old.retire()
		a.startAfter(old, v, o.CapShare)
		log.Info(fmt.Sprintf("reload: vm %s changed: its loop is replaced after its epoch in flight", name))
	}
	for _, v := range late {
		a.startAfter(a.loopOf(v.Name), v, o.CapShare)
		log.Info(fmt.Sprintf("reload: vm %s added: it starts once its previous loop ends", v.Name))
	}
	for _, l := range a.loops {
		if l.isRetired() {
			continue
		}
		v := vmNamed(o.VMs, l.vm.Name)
		if v.Pacing != vmNamed(cur.VMs, v.Name).Pacing || o.CapShare != cur.CapShare {
			l.setPacing(v.Pacing, o.CapShare)
			if v.Pacing != vmNamed(cur.VMs, v.Name).Pacing {
				log.Info(fmt.Sprintf("reload: vm %s pacing changed: it applies from its next epoch decision", v.Name), "pacing", fmt.Sprintf("%+v", v.Pacing))
			}
		}
	}
	for _, l := range added {
		a.loops = append(a.loops, l)
		if a.ctx != nil {
			a.startLocked(l)
		}
		log.Info(fmt.Sprintf("reload: vm %s added", l.vm.Name))
	}
	o.VMs = slices.Clone(o.VMs)
	// What the running agent keeps: its dialer, cap, hooks and clock.
	o.Dialer, o.Cap, o.Logger, o.Metrics, o.Now, o.Sleep = cur.Dialer, cur.Cap, cur.Logger, cur.Metrics, cur.Now, cur.Sleep
	o.Progress, o.EpochDone, o.StartGuard = cur.Progress, cur.EpochDone, cur.StartGuard
	a.o = o
	return nil
}

// startAfter starts a loop for v once old (if any) has ended, its source
// and state directory free.
func (a *Agent) startAfter(old *vmLoop, v VM, share float64) {
	a.pending[v.Name] = true
	a.active++
	go func() {
		if old != nil {
			a.reap(old)
		}
		l, err := a.newVMLoop(v, share)
		a.mu.Lock()
		defer a.mu.Unlock()
		delete(a.pending, v.Name)
		a.active--
		switch {
		case err != nil:
			a.o.Logger.Error("reload: the VM could not be set up; it is not replicated", "vm", v.Name, "err", err)
			a.errs = append(a.errs, VMError{VM: v.Name, Err: err})
		case a.ended || a.ctx == nil || a.ctx.Err() != nil:
			l.close()
		default:
			a.loops = append(a.loops, l)
			a.startLocked(l)
			a.o.Logger.Info(fmt.Sprintf("reload: vm %s started", v.Name))
		}
		a.settleLocked()
	}()
}

// reap waits for l to end and, if it is still listed (it ended on its own
// before a reload retired it), closes it and takes it off the list.
func (a *Agent) reap(l *vmLoop) {
	<-l.exited
	a.mu.Lock()
	listed := slices.Contains(a.loops, l)
	a.loops = slices.DeleteFunc(a.loops, func(x *vmLoop) bool { return x == l })
	a.mu.Unlock()
	if listed {
		l.close()
	}
}

// loopOf is the loop of the VM named, retired or not; nil if none.
func (a *Agent) loopOf(name string) *vmLoop {
	for i := len(a.loops) - 1; i >= 0; i-- {
		if a.loops[i].vm.Name == name {
			return a.loops[i]
		}
	}
	return nil
}

func vmNamed(vms []VM, name string) VM {
	for _, v := range vms {
		if v.Name == name {
			return v
		}
	}
	return VM{}
}

// vmDiff is what a reload changes in the set of VMs: names removed and
// changed (other than in pacing), and VMs added.
type vmDiff struct {
	removed, changed []string
	added            []VM
}

func diffVMs(old, new []VM) vmDiff {
	var d vmDiff
	for _, o := range old {
		n := vmNamed(new, o.Name)
		switch {
		case n.Name == "":
			d.removed = append(d.removed, o.Name)
		case !sameSource(o, n):
			d.changed = append(d.changed, o.Name)
		}
	}
	for _, n := range new {
		if vmNamed(old, n.Name).Name == "" {
			d.added = append(d.added, n)
		}
	}
	return d
}

// sameSource reports whether a and b replicate the same VM in the same
// way, pacing aside; clocks, hooks and loggers are not compared.
func sameSource(a, b VM) bool {
	if a.StateDir != b.StateDir || a.Dedup != b.Dedup || a.RAMCapture != b.RAMCapture || (a.Live == nil) != (b.Live == nil) || (a.Files == nil) != (b.Files == nil) {
		return false
	}
	if a.Live != nil {
		return reflect.DeepEqual(withoutHooks(*a.Live), withoutHooks(*b.Live))
	}
	return reflect.DeepEqual(withoutHooks(*a.Files), withoutHooks(*b.Files))
}

// withoutHooks is the struct v with its func and *slog.Logger fields
// cleared: DeepEqual never finds two funcs equal.
func withoutHooks[T any](v T) T {
	rv := reflect.ValueOf(&v).Elem()
	logger := reflect.TypeFor[*slog.Logger]()
	for i := range rv.NumField() {
		f := rv.Field(i)
		if f.CanSet() && (f.Kind() == reflect.Func || f.Type() == logger) {
			f.SetZero()
		}
	}
	return v
}

// capString is a bandwidth cap for the log.
func capString(bps float64) string {
	if bps == 0 {
		return "none"
	}
	return units.FormatRate(bps)
}

// ReloadOn reloads a each time ask delivers, until ctx ends, with the
// options load returns (the configuration read again). A load or a reload
// that fails is logged and changes nothing: the running options stay.
func (a *Agent) ReloadOn(ctx context.Context, ask <-chan os.Signal, load func() (Options, error)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-ask:
		}
		a.mu.Lock()
		log, once := a.o.Logger, a.o.Once
		a.mu.Unlock()
		if once {
			log.Warn("reload ignored: sending one epoch per VM, the options are read once")
			continue
		}
		o, err := load()
		if err == nil {
			err = a.Reload(o)
		}
		if err != nil {
			log.Error("reload refused; still running with the previous configuration", "err", err)
			continue
		}
		log.Info("reload: configuration applied")
	}
}
