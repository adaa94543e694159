package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/drsync/drsync/internal/units"
	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/metrics"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/vfs"
)

// Agent replicates its VMs to the receiver, each in its own loop.
type Agent struct {
	o  Options // as last applied: by New, then by each Reload
	mu sync.Mutex
	// loops are the VMs replicated now; a loop a reload retired leaves
	// when it ends.
	loops []*vmLoop
	// pending are the VMs whose new loop waits for the old one's epoch in
	// flight (a VM changed, or added back while its old loop ends).
	pending map[string]bool
	ctx     context.Context // Run's; nil before Run
	active  int             // loops running or pending
	allDone chan struct{}   // closed when active drops to 0 after Run began
	ended   bool
	errs    VMErrors
	groups  map[string]*groupRun    // by member VM
	follows map[string]*groupFollow // by member VM, groups led elsewhere
	// groupStop ends the groups' listeners and followers (Close).
	groupStop func()
}

// New sets up every VM of o: its source, its sender, its pacing and its
// status; then, if some VMs are live, starts the guest guard through
// o.StartGuard, before any cut. A VM that cannot be set up as configured
// is a *SetupError.
func New(o Options) (*Agent, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.VMs = slices.Clone(o.VMs)
	a := &Agent{o: o, pending: map[string]bool{}, groups: map[string]*groupRun{}, follows: map[string]*groupFollow{}, groupStop: func() {}}
	follows, err := a.setupGroups()
	if err != nil {
		return nil, err
	}
	var guarded []GuardVM
	for _, v := range o.VMs {
		l, err := a.newVMLoop(v, o.CapShare)
		if err != nil {
			a.Close()
			return nil, err
		}
		a.loops = append(a.loops, l)
		if v.Live != nil {
			guarded = append(guarded, guardVM(v))
		}
	}
	follows()
	if len(guarded) > 0 && o.StartGuard != nil {
		// Before the first cut: from then on a dead sender must never
		// leave a guest paused.
		if err := o.StartGuard(guarded); err != nil {
			a.Close()
			return nil, err
		}
	}
	return a, nil
}

func guardVM(v VM) GuardVM {
	return GuardVM{Name: v.Name, QMP: v.Live.QMPSocket, WorkDir: v.Live.WorkDir, StateDir: v.StateDir}
}

// Close releases the senders and tears down the live sources.
func (a *Agent) Close() {
	a.groupStop()
	a.mu.Lock()
	loops := a.loops
	a.loops = nil
	a.mu.Unlock()
	for _, l := range loops {
		l.close()
	}
}

// close releases the loop's sender and tears down its live source.
func (l *vmLoop) close() {
	if l.domain != nil {
		l.domain.Close()
	}
	l.snd.Close()
	if l.source != nil {
		if err := l.source.Close(); err != nil {
			l.log.Warn("tearing down the live source", "err", err)
		}
	}
}

// Run runs every VM's loop, and those reloads add, until ctx ends or,
// with Once, each VM's epoch is committed or failed. The failures are
// VMErrors.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.ctx != nil {
		a.mu.Unlock()
		return errors.New("agent: Run called twice")
	}
	o := a.o
	a.ctx, a.allDone = ctx, make(chan struct{})
	o.Logger.Info("sending", "receiver", o.Receiver, "vms", len(a.loops), "once", o.Once, "fingerprint", o.Fingerprint)
	for _, l := range a.loops {
		a.startLocked(l)
	}
	a.settleLocked()
	a.mu.Unlock()
	<-a.allDone
	if !o.Once {
		// With Once the epoch summaries are the last words.
		o.Logger.Info("stopped")
	}
	a.mu.Lock()
	failed := slices.Clone(a.errs)
	order := map[string]int{}
	for i, v := range a.o.VMs {
		order[v.Name] = i + 1
	}
	a.mu.Unlock()
	if len(failed) > 0 {
		// In the order of the VMs configured; those a reload removed last.
		slices.SortStableFunc(failed, func(x, y VMError) int {
			rank := func(n string) int {
				if r := order[n]; r > 0 {
					return r
				}
				return len(order) + 1
			}
			return rank(x.VM) - rank(y.VM)
		})
		return failed
	}
	return nil
}

// startLocked runs l in its own goroutine, under a.ctx.
func (a *Agent) startLocked(l *vmLoop) {
	a.active++
	ctx, cancel := context.WithCancel(a.ctx)
	l.ctl.mu.Lock()
	l.ctl.cancel = cancel
	l.ctl.mu.Unlock()
	go func() {
		err := l.run(ctx)
		cancel()
		retired := l.isRetired()
		if retired {
			// Removed or replaced by a reload: nothing else will close it.
			l.close()
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if err != nil {
			a.errs = append(a.errs, VMError{VM: l.vm.Name, Err: err})
		}
		if retired {
			a.loops = slices.DeleteFunc(a.loops, func(x *vmLoop) bool { return x == l })
		}
		close(l.exited)
		a.active--
		a.settleLocked()
	}()
}

// settleLocked ends Run once no loop runs or waits to.
func (a *Agent) settleLocked() {
	if a.active == 0 && !a.ended && a.allDone != nil {
		a.ended = true
		close(a.allDone)
	}
}

// vmLoop replicates one VM.
type vmLoop struct {
	vm      *VM
	snd     *sender.Sender
	runner  epochRunner
	status  *statusRecorder
	metrics *metrics.Sender // nil without an endpoint
	pacer   *pacer
	final   bool
	log     *slog.Logger
	done    func(vm string) // nil: no progress display
	once    bool
	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error
	source  io.Closer // a live source to tear down at the end, if any
	// ramPath says how the live source's last cut took the guest's RAM
	// (livecut.RAMFull, livecut.RAMTracked); nil for image files.
	ramPath func() string
	// domain follows a libvirt domain's lifecycle (nil otherwise).
	domain domainWatch

	// A member of a consistency group is paced by its group: it asks for
	// its next snapshot at once, and group (nil on a follower, whose
	// leader paces) plans the cut.
	grouped bool
	group   *groupRun
	follow  *groupFollow // a follower's group: it reports the epochs to the leader

	// With adaptive epochs, the progress of the epoch being sent feeds the
	// pacer every liveEvery, so that the prediction follows the transfer.
	live      *liveProgress
	liveEvery time.Duration
	liveSaved time.Time // when the status last took an in-flight plan

	ctl    loopControl
	exited chan struct{} // closed when run has returned
}

// loopControl is what a reload changes in a running loop; run takes it
// between epochs only.
type loopControl struct {
	mu      sync.Mutex
	inEpoch bool
	waiting bool        // in an epoch, but waiting for a libvirt domain
	retired bool        // stop after the epoch in flight
	cancel  func()      // ends the loop's context: its sleep, its retries
	next    *nextPacing // pacing to apply at the next decision
}

type nextPacing struct {
	pc    Pacing
	share float64
}

// begin marks an epoch started, unless the loop is retired.
func (l *vmLoop) begin() bool {
	l.ctl.mu.Lock()
	defer l.ctl.mu.Unlock()
	if l.ctl.retired {
		return false
	}
	l.ctl.inEpoch = true
	return true
}

// end marks the epoch over and reports whether the loop is retired.
func (l *vmLoop) end() bool {
	l.ctl.mu.Lock()
	defer l.ctl.mu.Unlock()
	l.ctl.inEpoch = false
	return l.ctl.retired
}

// retire stops the loop after its epoch in flight commits, or at once if
// it is between epochs.
func (l *vmLoop) retire() {
	l.ctl.mu.Lock()
	defer l.ctl.mu.Unlock()
	l.ctl.retired = true
	// A loop waiting for its libvirt domain has no epoch in flight.
	if (!l.ctl.inEpoch || l.ctl.waiting) && l.ctl.cancel != nil {
		l.ctl.cancel()
	}
}

// waitDomain marks the loop waiting for its libvirt domain, with no
// epoch in flight: a loop retired already stops now.
func (l *vmLoop) waitDomain() {
	l.ctl.mu.Lock()
	defer l.ctl.mu.Unlock()
	l.ctl.waiting = true
	if l.ctl.retired && l.ctl.cancel != nil {
		l.ctl.cancel()
	}
}

func (l *vmLoop) domainBack() {
	l.ctl.mu.Lock()
	defer l.ctl.mu.Unlock()
	l.ctl.waiting = false
}

func (l *vmLoop) isRetired() bool {
	l.ctl.mu.Lock()
	defer l.ctl.mu.Unlock()
	return l.ctl.retired
}

// setPacing has the loop pace with pc, and plan with share, from its next
// decision on.
func (l *vmLoop) setPacing(pc Pacing, share float64) {
	l.ctl.mu.Lock()
	defer l.ctl.mu.Unlock()
	l.ctl.next = &nextPacing{pc, share}
}

// applyPacing takes the pacing a reload set, between epochs: an adaptive
// controller keeps what it learnt.
func (l *vmLoop) applyPacing() error {
	l.ctl.mu.Lock()
	n := l.ctl.next
	l.ctl.next = nil
	l.ctl.mu.Unlock()
	if n == nil {
		return nil
	}
	if n.pc.Adaptive() && l.pacer.ctl != nil {
		cfg, err := n.pc.Controller(n.share)
		if err == nil {
			err = l.pacer.ctl.SetConfig(cfg)
		}
		if err != nil {
			return err
		}
		l.pacer.pc = n.pc
	} else {
		p, err := newPacer(n.pc, n.share, l.pacer.prevCut)
		if err != nil {
			return err
		}
		p.first, p.breach = l.pacer.first, l.pacer.breach
		if n.pc.Mode != l.vm.Pacing.Mode || n.pc.interval() != l.vm.Pacing.interval() {
			p.first = time.Time{} // a new grid
		}
		l.pacer = p
	}
	if !n.pc.AutoCompression {
		if err := l.snd.SetCompression(n.pc.Compression); err != nil {
			return err
		}
	}
	l.vm.Pacing = n.pc
	return nil
}

// liveProgress is the latest progress the sender reported, and when; the
// sender's goroutine writes it, the loop's watcher reads it.
type liveProgress struct {
	mu sync.Mutex
	p  sender.Progress
	at time.Time
}

func (lp *liveProgress) set(p sender.Progress, at time.Time) {
	lp.mu.Lock()
	lp.p, lp.at = p, at
	lp.mu.Unlock()
}

func (lp *liveProgress) get() (sender.Progress, time.Time) {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	return lp.p, lp.at
}

// liveSource is live VM v's sender.Source, cutting through ls: its own
// cuts, or its group's (led here, grp, or followed, follow). A libvirt
// domain's snapshots carry its definition either way, read just after
// the cut, so that a group point's replica holds the machine its memory
// belongs to as a single cut's does.
func (a *Agent) liveSource(v *VM, ls *livecut.Source) (src sender.Source, grp *groupRun, follow *groupFollow) {
	src = ls
	if g := a.groups[v.Name]; g != nil {
		grp = g
		g.members[v.Name] = groupMember(ls)
		src = g.source(v.Name)
	} else if f := a.follows[v.Name]; f != nil {
		follow = f
		f.members[v.Name] = f.member(v.Name, groupMember(ls))
		src = followSource{f, v.Name}
	}
	return v.Libvirt.WithDefinition(src), grp, follow
}

func (a *Agent) newVMLoop(vm VM, share float64) (*vmLoop, error) {
	o := a.o
	v := &vm
	log := o.Logger.With("vm", v.Name)
	dir := v.StateDir
	var src sender.Source
	var closer io.Closer
	var grp *groupRun
	var follow *groupFollow
	var grouped bool
	var ramPath func() string
	if v.Live != nil {
		lo := *v.Live
		lo.Logger = log
		lo.Final = o.Final
		if lo.TrackRAM == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			err := setupRAMCapture(ctx, v.RAMCapture, &lo, v.Libvirt.Enabled(), log)
			cancel()
			if err != nil {
				return nil, &SetupError{v.Name, err}
			}
		}
		ls, err := livecut.New(lo)
		if err != nil {
			return nil, &SetupError{v.Name, err}
		}
		closer = ls
		ramPath = func() string { return ls.LastCut().RAMPath }
		src, grp, follow = a.liveSource(v, ls)
		grouped = grp != nil || follow != nil
	} else {
		fs, err := sender.NewFileSource(*v.Files)
		if err != nil {
			return nil, &SetupError{v.Name, err}
		}
		src = fs
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		if closer != nil {
			closer.Close()
		}
		return nil, fmt.Errorf("vm %s: create state directory: %w", v.Name, err)
	}
	so := sender.Options{
		VM:          v.Name,
		Source:      src,
		Dialer:      DialerFor(o.Dialer, v.Name),
		Store:       sender.Store{FS: vfs.Default, Dir: dir},
		Compression: v.Pacing.Compression,
		Now:         o.Now,
		Logger:      o.Logger,
		Dedup:       v.Dedup,
	}
	// Always kept: a reload may make the pacing adaptive.
	live := &liveProgress{}
	so.Progress = func(p sender.Progress) {
		live.set(p, o.Now())
		if o.Progress != nil {
			o.Progress(v.Name, p)
		}
	}
	snd, err := sender.New(so)
	if err != nil {
		if closer != nil {
			closer.Close()
		}
		return nil, fmt.Errorf("vm %s: %w", v.Name, err)
	}
	status := loadStatus(filepath.Join(dir, StatusFile), v.Name, o.Now, log)
	pc, err := newPacer(v.Pacing, share, status.st.Cut)
	if err != nil {
		snd.Close()
		if closer != nil {
			closer.Close()
		}
		return nil, &SetupError{v.Name, err}
	}
	l := &vmLoop{
		vm:      v,
		snd:     snd,
		pacer:   pc,
		status:  status,
		metrics: o.Metrics,
		final:   o.Final,
		log:     log,
		done:    o.EpochDone,
		once:    o.Once,
		now:     o.Now,
		sleep:   o.Sleep,
		source:  closer,
		ramPath: ramPath,
		grouped: grouped,
		group:   grp,
		follow:  follow,

		live:      live,
		liveEvery: time.Second,
		exited:    make(chan struct{}),
	}
	if v.Live != nil {
		l.noteGuard(dir)
	}
	var runner epochRunner = snd
	if v.Live != nil && v.Libvirt.Enabled() && !grouped {
		// Epochs wait while libvirt has the domain shut off or migrating
		// away. (A group member's cut goes through its group.)
		status.st.Domain = nil
		w := libvirtvm.Watch(v.Libvirt.Libvirt, v.Libvirt.Domain, libvirtvm.WatchOptions{Now: o.Now, Logger: log, Notify: l.domainChanged})
		l.domain = w
		runner = &domainGate{next: snd, w: w, once: o.Once, grace: 3 * time.Second, interrupted: l.domainInterrupted,
			waiting: l.waitDomain, resumed: l.domainBack}
	}
	r := newRetrier(runner, o.Retries)
	r.sleep = o.Sleep
	r.onFailure = l.failed
	l.runner = r
	return l, nil
}

// noteGuard reports what the guest guard did while no sender ran.
func (l *vmLoop) noteGuard(stateDir string) {
	rec, err := ReadGuardRecord(stateDir)
	if err != nil {
		l.log.Warn("guest guard record unreadable", "err", err)
		return
	}
	if n := len(rec.Events); n > 0 && rec.Events[n-1].At.After(l.status.st.Updated) {
		// Since the last sender's last word.
		ev := rec.Events[n-1]
		switch {
		case ev.Error != "":
			l.log.Error("the guest guard could not resume the guest after the previous sender died during a cut; this sender resumes it", "at", ev.At, "err", ev.Error)
			if l.metrics != nil {
				l.metrics.GuestPaused(l.vm.Name, true)
			}
		case ev.Resumed:
			l.log.Warn("the previous sender died during a cut; the guest guard resumed the guest", "at", ev.At, "paused_ms", ev.PausedMS, "resumes", rec.Resumes)
		}
	}
	if l.metrics != nil {
		l.metrics.GuardResumes(l.vm.Name, rec.Resumes)
	}
}

// run sends epochs until ctx ends, a permanent error, or, with once, the
// first committed epoch. A stop by ctx is not an error unless once: then the
// epoch the caller asked for was not sent.
func (l *vmLoop) run(ctx context.Context) error {
	for {
		if !l.begin() {
			l.log.Info("reload: replication of this VM stopped between epochs")
			return nil
		}
		start := l.now()
		stopWatch := l.watch(ctx)
		res, err := l.runner.RunEpoch(ctx)
		stopWatch()
		retired := l.end()
		if l.done != nil {
			l.done(l.vm.Name)
		}
		if err != nil {
			if ctx.Err() != nil {
				if l.once {
					return fmt.Errorf("interrupted before the epoch was committed: %w", ctx.Err())
				}
				return nil
			}
			if !retryable(err) {
				l.log.Error("replication of this VM stopped: retrying cannot fix this; correct the configuration on either side, then restart drsync send", "err", err)
			} else {
				l.log.Error("epoch failed; giving up", "err", err, "consecutive_failures", l.status.st.ConsecutiveFailures)
			}
			return err
		}
		if err := l.applyPacing(); err != nil {
			// Reload validated it: this is a bug, not a configuration error.
			l.log.Error("reload: the new pacing could not be applied; keeping the old", "err", err)
		}
		pc := l.pacer.committed(res, start, l.now())
		if l.grouped {
			if l.group != nil {
				l.group.committed(l.vm.Name, res, l.now())
			} else if l.follow != nil {
				l.follow.committed(l.vm.Name, res, l.now())
			}
			pc.next = time.Time{} // the group plans when it cuts
		}
		l.committed(res, pc)
		if retired {
			l.log.Info("reload: replication of this VM stopped after its epoch in flight committed", "epoch", res.Epoch)
			return nil
		}
		if l.once {
			if l.final {
				l.log.Warn("switch-back epoch committed: this VM stays paused here; start it at the other site (drsync failover there), then stop this QEMU", "epoch", res.Epoch)
			}
			return nil
		}
		if pc.level != res.Compression {
			if err := l.snd.SetCompression(pc.level); err != nil {
				return err
			}
		}
		wait := pc.next.Sub(l.now())
		if wait > 0 {
			l.log.Debug("next epoch", "in", wait.Round(time.Millisecond))
			if l.sleep(ctx, wait) != nil {
				return nil
			}
		}
	}
}

// watch feeds the pacer the progress of the epoch being sent, every
// liveEvery until the returned function is called (which waits for it).
func (l *vmLoop) watch(ctx context.Context) (stop func()) {
	if l.pacer.ctl == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(l.liveEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				l.inFlight()
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// inFlight plans again from the progress of the epoch being sent, and
// reports a breach the live goodput predicts at once: in the log, the
// status and the metrics.
func (l *vmLoop) inFlight() {
	pr, at := l.live.get()
	now := l.now()
	pc, ok := l.pacer.inFlight(pr, at, now)
	if !ok {
		return
	}
	f := pc.flow
	switch {
	case pc.breachBegan:
		l.log.Warn("RPO target will be missed at the live goodput of the epoch being sent: the link cannot carry what the guest changes within the target (raise rpo_target or bandwidth, or reduce the guest's writes)",
			"rpo_target", l.vm.Pacing.RPOTarget, "predicted_lag", secs(f.PredictedLagSeconds), "live_goodput", units.FormatRate(f.LiveGoodputBps), "plan", pc.reason)
	case pc.breachEnded:
		l.log.Info("RPO target within reach again", "rpo_target", l.vm.Pacing.RPOTarget, "predicted_lag", secs(f.PredictedLagSeconds), "plan", pc.reason)
	}
	// The status file is synced to disk: rewrite it when the breach comes
	// or goes, otherwise every few seconds.
	if pc.breachBegan || pc.breachEnded || now.Sub(l.liveSaved) >= 5*l.liveEvery {
		l.status.planned(f)
		l.liveSaved = now
	}
	if l.metrics != nil {
		l.metrics.Planned(l.vm.Name, metrics.Plan{RPOTarget: l.vm.Pacing.RPOTarget, NextInterval: secs(f.NextEpochSeconds), PredictedLag: secs(f.PredictedLagSeconds),
			Breach: f.BreachPredicted, Level: int(pc.level), DirtyRate: f.ModelDirtyBytesPerSec, Goodput: f.PlannedGoodputBps})
	}
}

func (l *vmLoop) committed(res *sender.Result, pc pace) {
	lag := l.now().Sub(res.Cut)
	attrs := []any{"epoch", res.Epoch, "cut", res.Cut.UTC().Format(time.RFC3339Nano), "base", res.Base,
		"items", res.Items, "data_bytes", res.DataBytes, "wire_bytes", res.WireBytes, "resent_bytes", res.ResentBytes,
		"attempts", res.Attempts, "duration", res.Duration.Round(time.Millisecond), "send_time", res.SendTime.Round(time.Millisecond), "rpo_lag", lag.Round(time.Millisecond)}
	ram := ""
	if l.ramPath != nil {
		ram = l.ramPath()
	}
	if res.Pause > 0 {
		attrs = append(attrs, "guest_pause", res.Pause.Round(10*time.Microsecond), "qemu_downtime", res.HypervisorDowntime, "ram_path", ram)
	}
	if res.RAMDataPages+res.RAMRefPages+res.RAMZeroPages > 0 {
		attrs = append(attrs, "ram_pages_data", res.RAMDataPages, "ram_pages_ref", res.RAMRefPages, "ram_pages_dup", res.RAMDupPages, "ram_pages_zero", res.RAMZeroPages)
	}
	f := pc.flow
	attrs = append(attrs, "epoch_length", secs(f.EpochSeconds), "goodput", units.FormatRate(f.GoodputBytesPerSecond), "dirty_rate", units.FormatRate(f.DirtyBytesPerSecond), "compression", f.Compression)
	if f.RPOTargetSeconds > 0 {
		attrs = append(attrs, "next_epoch", secs(f.NextEpochSeconds), "predicted_lag", secs(f.PredictedLagSeconds), "next_compression", pc.level)
	}
	l.log.Info("epoch committed", attrs...)
	switch {
	case pc.breachBegan:
		l.log.Warn("RPO target will be missed at the measured rates: the link cannot carry what the guest changes within the target (raise rpo_target or bandwidth, or reduce the guest's writes)",
			"rpo_target", l.vm.Pacing.RPOTarget, "predicted_lag", secs(f.PredictedLagSeconds), "plan", pc.reason)
	case pc.breachEnded:
		l.log.Info("RPO target within reach again", "rpo_target", l.vm.Pacing.RPOTarget, "predicted_lag", secs(f.PredictedLagSeconds), "plan", pc.reason)
	}
	l.status.success(res, f, ram)
	if l.metrics != nil {
		l.metrics.GuestPaused(l.vm.Name, false)
		if res.Pause > livecut.PauseAlarm {
			l.metrics.LongPause(l.vm.Name)
		}
		l.metrics.Committed(l.vm.Name, metrics.Epoch{Cut: res.Cut, Duration: res.Duration, SendTime: res.SendTime, ChangedBytes: res.DataBytes + res.RefBytes, WireBytes: res.WireBytes,
			Resent: res.ResentBytes, Pause: res.Pause, RAMPath: ram, RAMDataPages: res.RAMDataPages, RAMRefPages: res.RAMRefPages - res.RAMDupPages, RAMDupPages: res.RAMDupPages, RAMZero: res.RAMZeroPages})
		if f.RPOTargetSeconds > 0 {
			l.metrics.Planned(l.vm.Name, metrics.Plan{RPOTarget: l.vm.Pacing.RPOTarget, NextInterval: secs(f.NextEpochSeconds), PredictedLag: secs(f.PredictedLagSeconds),
				Breach: f.BreachPredicted, Level: int(pc.level), DirtyRate: f.ModelDirtyBytesPerSec, Goodput: f.PlannedGoodputBps})
		}
	}
}

// secs converts seconds to a duration rounded for people.
func secs(s float64) time.Duration {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond)
}

// failed is the retrier's onFailure hook.
func (l *vmLoop) failed(err error, wait time.Duration) {
	l.ctl.mu.Lock()
	if l.ctl.retired && wait > 0 && l.ctl.cancel != nil {
		// A removed VM's failed epoch is not retried.
		l.ctl.cancel()
	}
	l.ctl.mu.Unlock()
	if l.done != nil {
		l.done(l.vm.Name)
	}
	l.status.failure(err)
	if l.metrics != nil {
		l.metrics.Failed(l.vm.Name)
		if errors.Is(err, livecut.ErrGuestPaused) {
			l.metrics.GuestPaused(l.vm.Name, true)
		}
	}
	// The last failure is reported by run, which knows why it stops.
	if wait > 0 {
		l.log.Warn("epoch failed; retrying", "err", err, "retry_in", wait, "consecutive_failures", l.status.st.ConsecutiveFailures)
	}
}

// VMError is the failure of one VM's loop.
type VMError struct {
	VM  string
	Err error
}

func (e VMError) Error() string { return fmt.Sprintf("vm %s: %v", e.VM, e.Err) }
func (e VMError) Unwrap() error { return e.Err }

// VMErrors are the failures of several VMs, in the order of Options.VMs.
type VMErrors []VMError

func (es VMErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

func (es VMErrors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}
