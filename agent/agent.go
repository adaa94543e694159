package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/metrics"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/vfs"
)

// Agent replicates its VMs to the receiver, each in its own loop.
type Agent struct {
	o     Options
	loops []*vmLoop
}

// New sets up every VM of o: its source, its sender, its pacing and its
// status; then, if some VMs are live, starts the guest guard through
// o.StartGuard, before any cut. A VM that cannot be set up as configured
// is a *SetupError.
func New(o Options) (*Agent, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{o: o}
	var guarded []GuardVM
	for i := range o.VMs {
		v := &o.VMs[i]
		l, err := a.newVMLoop(v)
		if err != nil {
			a.Close()
			return nil, err
		}
		a.loops = append(a.loops, l)
		if v.Live != nil {
			guarded = append(guarded, GuardVM{Name: v.Name, QMP: v.Live.QMPSocket, WorkDir: v.Live.WorkDir, StateDir: v.StateDir})
		}
	}
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

// Close releases the senders and tears down the live sources.
func (a *Agent) Close() {
	for _, l := range a.loops {
		l.snd.Close()
		if l.source != nil {
			if err := l.source.Close(); err != nil {
				l.log.Warn("tearing down the live source", "err", err)
			}
		}
	}
	a.loops = nil
}

// Run runs every VM's loop until ctx ends or, with Once, each VM's epoch
// is committed or failed. The failures are VMErrors.
func (a *Agent) Run(ctx context.Context) error {
	o := a.o
	o.Logger.Info("sending", "receiver", o.Receiver, "vms", len(a.loops), "once", o.Once, "fingerprint", o.Fingerprint)
	errs := make([]error, len(a.loops))
	var wg sync.WaitGroup
	for i, l := range a.loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.run(ctx)
		}()
	}
	wg.Wait()
	if !o.Once {
		// With Once the epoch summaries are the last words.
		o.Logger.Info("stopped")
	}
	var failed VMErrors
	for i, err := range errs {
		if err != nil {
			failed = append(failed, VMError{VM: a.loops[i].vm.Name, Err: err})
		}
	}
	if len(failed) > 0 {
		return failed
	}
	return nil
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

	// With adaptive epochs, the progress of the epoch being sent feeds the
	// pacer every liveEvery, so that the prediction follows the transfer.
	live      *liveProgress
	liveEvery time.Duration
	liveSaved time.Time // when the status last took an in-flight plan
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

func (a *Agent) newVMLoop(v *VM) (*vmLoop, error) {
	o := a.o
	log := o.Logger.With("vm", v.Name)
	dir := v.StateDir
	var src sender.Source
	var closer io.Closer
	if v.Live != nil {
		lo := *v.Live
		lo.Logger = log
		lo.Final = o.Final
		ls, err := livecut.New(lo)
		if err != nil {
			return nil, &SetupError{v.Name, err}
		}
		src, closer = ls, ls
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
		Dialer:      o.Dialer,
		Store:       sender.Store{FS: vfs.Default, Dir: dir},
		Compression: v.Pacing.Compression,
		Now:         o.Now,
		Logger:      o.Logger,
		Dedup:       v.Dedup,
	}
	var live *liveProgress
	if v.Pacing.Adaptive() {
		live = &liveProgress{}
	}
	if o.Progress != nil || live != nil {
		so.Progress = func(p sender.Progress) {
			if live != nil {
				live.set(p, o.Now())
			}
			if o.Progress != nil {
				o.Progress(v.Name, p)
			}
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
	pc, err := newPacer(v.Pacing, o.CapShare, status.st.Cut)
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

		live:      live,
		liveEvery: time.Second,
	}
	if v.Live != nil {
		l.noteGuard(dir)
	}
	r := newRetrier(snd, o.Retries)
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
		start := l.now()
		stopWatch := l.watch(ctx)
		res, err := l.runner.RunEpoch(ctx)
		stopWatch()
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
		pc := l.pacer.committed(res, start, l.now())
		l.committed(res, pc)
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
	if l.live == nil || l.pacer.ctl == nil {
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
			"rpo_target", l.vm.Pacing.RPOTarget, "predicted_lag", secs(f.PredictedLagSeconds), "live_goodput", formatRate(f.LiveGoodputBps), "plan", pc.reason)
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
	if res.Pause > 0 {
		attrs = append(attrs, "guest_pause", res.Pause.Round(10*time.Microsecond), "qemu_downtime", res.HypervisorDowntime)
	}
	if res.RAMDataPages+res.RAMRefPages+res.RAMZeroPages > 0 {
		attrs = append(attrs, "ram_pages_data", res.RAMDataPages, "ram_pages_ref", res.RAMRefPages, "ram_pages_dup", res.RAMDupPages, "ram_pages_zero", res.RAMZeroPages)
	}
	f := pc.flow
	attrs = append(attrs, "epoch_length", secs(f.EpochSeconds), "goodput", formatRate(f.GoodputBytesPerSecond), "dirty_rate", formatRate(f.DirtyBytesPerSecond), "compression", f.Compression)
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
	l.status.success(res, f)
	if l.metrics != nil {
		l.metrics.GuestPaused(l.vm.Name, false)
		if res.Pause > livecut.PauseAlarm {
			l.metrics.LongPause(l.vm.Name)
		}
		l.metrics.Committed(l.vm.Name, metrics.Epoch{Cut: res.Cut, Duration: res.Duration, SendTime: res.SendTime, ChangedBytes: res.DataBytes + res.RefBytes, WireBytes: res.WireBytes,
			Resent: res.ResentBytes, Pause: res.Pause, RAMDataPages: res.RAMDataPages, RAMRefPages: res.RAMRefPages - res.RAMDupPages, RAMDupPages: res.RAMDupPages, RAMZero: res.RAMZeroPages})
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

// formatRate renders bytes/s in log lines as bits per second, as links
// are rated.
func formatRate(bps float64) string {
	b := bps * 8
	switch {
	case b >= 1e9:
		return fmt.Sprintf("%.3g Gbit/s", b/1e9)
	case b >= 1e6:
		return fmt.Sprintf("%.3g Mbit/s", b/1e6)
	case b >= 1e3:
		return fmt.Sprintf("%.3g kbit/s", b/1e3)
	}
	return fmt.Sprintf("%.0f bit/s", b)
}
