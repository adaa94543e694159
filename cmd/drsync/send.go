package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/metrics"
	"github.com/drsync/drsync/ratelimit"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/vfs"
)

func sendCommand() *command {
	var configPath, vmName string
	var once, final bool
	var retries int
	var lf logFlags
	c := &command{
		name:  "send",
		short: "replicate the configured VMs to the receiver (daemon, or --once)",
		args:  "--config FILE [--once [--retries N] [--final]] [--vm NAME] [--log-level LEVEL] [--log-json]",
		summary: `Replicate the configured VMs to the receiver, each in its own loop:
back to back (mode = "continuous", at most one epoch start per min_interval)
or one epoch per interval (mode = "scheduled"). Connection failures are
retried with a backoff of 1 s doubling to 60 s; a refusal by the receiver
stops that VM. With --once, send one epoch per VM and exit: 0 only if all
of them were committed (for cron and systemd timers).

--final (with --once, live VMs only) is the last epoch of a planned
switch-back: the guest is cut and not resumed, so once the epoch is
committed the VM can start at the other site (drsync failover there)
without running in two places. This QEMU then stays paused; stop it.`,
		flags: func(set *flag.FlagSet) {
			set.StringVar(&configPath, "config", "", "sender configuration file (required)")
			set.BoolVar(&once, "once", false, "send one epoch per VM, then exit")
			set.StringVar(&vmName, "vm", "", "replicate only this VM of the configuration")
			set.IntVar(&retries, "retries", 5, "with --once: retries of a failed epoch before giving up")
			set.BoolVar(&final, "final", false, "with --once: last epoch of a switch-back; the guest stays paused")
			lf.register(set)
		},
	}
	c.run = func(ctx context.Context, e *env, set *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if configPath == "" {
			return usagef("--config is required")
		}
		if retries < 0 {
			return usagef("--retries %d: must not be negative", retries)
		}
		retriesSet := false
		set.Visit(func(f *flag.Flag) { retriesSet = retriesSet || f.Name == "retries" })
		if retriesSet && !once {
			return usagef("--retries only applies with --once; without it failures are retried until they stop")
		}
		if final && !once {
			return usagef("--final goes with --once: it is one last epoch")
		}
		cfg, err := loadSenderConfig(configPath)
		if err != nil {
			return err
		}
		vms := make([]*VMConfig, 0, len(cfg.VMs))
		if vmName != "" {
			v, ok := cfg.vm(vmName)
			if !ok {
				var names []string
				for _, v := range cfg.VMs {
					names = append(names, v.Name)
				}
				return usagef("--vm %q: no such VM in %s (configured: %s)", vmName, configPath, strings.Join(names, ", "))
			}
			vms = append(vms, v)
		} else {
			for i := range cfg.VMs {
				vms = append(vms, &cfg.VMs[i])
			}
		}
		// The progress bar goes to a terminal: stderr when logs are shown
		// there too (the bar then redraws around each log line), else stdout.
		var bar *progressBar
		var logw io.Writer = e.stderr
		switch {
		case isTerminal(e.stderr):
			bar = newProgressBar(e.stderr, e.now)
			logw = bar
		case isTerminal(e.stdout):
			bar = newProgressBar(e.stdout, e.now)
		}
		log, err := lf.logger(logw)
		if err != nil {
			return err
		}
		if !once {
			retries = -1
		}
		if final {
			for _, v := range vms {
				if !v.live() {
					return usagef("--final: vm %q is not a live VM (qmp); there is nothing to pause", v.Name)
				}
			}
		}
		return send(ctx, e, cfg, vms, sendOptions{once: once, final: final, retries: retries, log: log, bar: bar})
	}
	return c
}

// faultEnv names a fault point for tests: "kill-after-migration" makes
// the sender SIGKILL itself when a cut's migration completes, the moment
// its death leaves the guest stopped.
const faultEnv = "DRSYNC_FAULT"

// guardPipe is the write end of the guest guard's pipe: it stays open,
// and referenced, for the sender's whole life.
var guardPipe *os.File

type sendOptions struct {
	once    bool
	final   bool // the guest stays paused after the cut (switch-back)
	retries int  // per epoch; negative: until success
	log     *slog.Logger
	bar     *progressBar // nil unless stderr is a terminal
	metrics *metrics.Sender
	// capShare is each VM's part of the bandwidth cap, in bytes/s (0: none).
	capShare float64
}

func send(ctx context.Context, e *env, cfg *SenderConfig, vms []*VMConfig, o sendOptions) error {
	id, err := cfg.Identity.load(cfg.file)
	if err != nil {
		return err
	}
	trust, err := cfg.trust()
	if err != nil {
		return err
	}
	var dialer sender.Dialer = quicDialer(cfg.Receiver.Address, tlsid.ClientTLS(id, trust), cfg.transportOptions(), cfg.Receiver.Connections)
	if cp := float64(cfg.Receiver.BandwidthCap); cp > 0 {
		// One limiter for all VMs: the cap is the link's. Each VM's epochs
		// are planned with an equal share of it.
		lim, err := ratelimit.New(ratelimit.Options{Rate: cp, Now: e.now, Sleep: sleepCtx})
		if err != nil {
			return &configError{cfg.file, "receiver.bandwidth_cap", err}
		}
		dialer = cappedDialer(dialer, lim)
		o.capShare = cp / float64(len(vms))
	}
	if cfg.Metrics != "" {
		o.metrics = metrics.NewSender(e.now)
		if err := serveMetrics(ctx, cfg.file, cfg.Metrics, o.metrics.Handler(), senderPage(e, cfg, vms), o.log); err != nil {
			return err
		}
	}
	loops := make([]*vmLoop, 0, len(vms))
	defer func() {
		for _, l := range loops {
			l.snd.Close()
			if l.source != nil {
				if err := l.source.Close(); err != nil {
					l.log.Warn("tearing down the live source", "err", err)
				}
			}
		}
	}()
	var guarded []guardVM
	for _, v := range vms {
		l, err := newVMLoop(e, cfg, v, dialer, o)
		if err != nil {
			return err
		}
		loops = append(loops, l)
		if v.live() {
			dir := cfg.stateDir(v.Name)
			guarded = append(guarded, guardVM{Name: v.Name, QMP: v.QMP, WorkDir: v.liveOptions(dir, e.now).WorkDir, StateDir: dir})
		}
	}
	if len(guarded) > 0 {
		// Before the first cut: from then on a dead sender must never
		// leave a guest paused.
		w, err := startGuard(guarded, o.log)
		if err != nil {
			return err
		}
		guardPipe = w
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.log.Info("sending", "receiver", cfg.Receiver.Address, "vms", len(loops), "once", o.once, "fingerprint", id.Fingerprint)

	errs := make([]error, len(loops))
	var wg sync.WaitGroup
	for i, l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.run(ctx)
		}()
	}
	wg.Wait()
	if !o.once {
		// With --once the epoch summaries are the last words.
		o.log.Info("stopped")
	}
	var failed vmErrors
	for i, err := range errs {
		if err != nil {
			failed = append(failed, vmError{vm: loops[i].vm.Name, err: err})
		}
	}
	if len(failed) > 0 {
		return failed
	}
	return nil
}

// vmLoop replicates one VM.
type vmLoop struct {
	vm      *VMConfig
	snd     *sender.Sender
	runner  epochRunner
	status  *senderStatusRecorder
	metrics *metrics.Sender // nil without an endpoint
	pacer   *pacer
	final   bool
	log     *slog.Logger
	bar     *progressBar
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

func newVMLoop(e *env, cfg *SenderConfig, v *VMConfig, dialer sender.Dialer, o sendOptions) (*vmLoop, error) {
	log := o.log.With("vm", v.Name)
	dir := cfg.stateDir(v.Name)
	var src sender.Source
	var closer io.Closer
	if v.live() {
		lo := v.liveOptions(dir, e.now)
		lo.Logger = log
		lo.Final = o.final
		if os.Getenv(faultEnv) == "kill-after-migration" {
			lo.AfterMigration = func() { syscall.Kill(os.Getpid(), syscall.SIGKILL) }
		}
		ls, err := livecut.New(lo)
		if err != nil {
			return nil, &configError{cfg.file, fmt.Sprintf("vm %q", v.Name), err}
		}
		src, closer = ls, ls
	} else {
		if err := checkImages(cfg.file, v); err != nil {
			return nil, err
		}
		fs, err := sender.NewFileSource(v.fileSourceOptions(e.now))
		if err != nil {
			return nil, &configError{cfg.file, fmt.Sprintf("vm %q", v.Name), err}
		}
		src = fs
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("vm %s: create state directory: %w", v.Name, err)
	}
	so := sender.Options{
		VM:          v.Name,
		Source:      src,
		Dialer:      dialer,
		Store:       sender.Store{FS: vfs.Default, Dir: dir},
		Compression: v.compression,
		Now:         e.now,
		Logger:      o.log,
		Dedup:       v.dedup(),
	}
	var live *liveProgress
	if v.adaptive() {
		live = &liveProgress{}
	}
	if o.bar != nil || live != nil {
		so.Progress = func(p sender.Progress) {
			if live != nil {
				live.set(p, e.now())
			}
			if o.bar != nil {
				o.bar.update(v.Name, p)
			}
		}
	}
	snd, err := sender.New(so)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", v.Name, err)
	}
	status := loadSenderStatus(filepath.Join(dir, senderStatusFile), v.Name, e.now, log)
	pc, err := newPacer(v, o.capShare, status.st.Cut)
	if err != nil {
		snd.Close()
		return nil, &configError{cfg.file, fmt.Sprintf("vm %q", v.Name), err}
	}
	l := &vmLoop{
		vm:      v,
		snd:     snd,
		pacer:   pc,
		status:  status,
		metrics: o.metrics,
		final:   o.final,
		log:     log,
		bar:     o.bar,
		once:    o.once,
		now:     e.now,
		sleep:   sleepCtx,
		source:  closer,

		live:      live,
		liveEvery: time.Second,
	}
	if v.live() {
		l.noteGuard(dir)
	}
	r := newRetrier(snd, o.retries)
	r.onFailure = l.failed
	l.runner = r
	return l, nil
}

// noteGuard reports what the guest guard did while no sender ran.
func (l *vmLoop) noteGuard(stateDir string) {
	rec, err := readGuardRecord(stateDir)
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

// cappedDialer puts every connection d opens under lim.
func cappedDialer(d sender.Dialer, lim *ratelimit.Limiter) sender.Dialer {
	return sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) {
		rw, err := d.Dial(ctx)
		if err != nil {
			return nil, err
		}
		return ratelimit.NewConn(rw, lim), nil
	})
}

// checkImages makes a missing or misnamed image a configuration error at
// start, rather than a retried failure at the first epoch.
func checkImages(file string, v *VMConfig) error {
	check := func(key, path string) error {
		st, err := os.Stat(path)
		if err != nil {
			return &configError{file, fmt.Sprintf("vm %q: %s", v.Name, key), err}
		}
		if !st.Mode().IsRegular() && st.Mode()&fs.ModeDevice == 0 {
			return &configError{file, fmt.Sprintf("vm %q: %s", v.Name, key), fmt.Errorf("%s is neither a file nor a block device", path)}
		}
		return nil
	}
	for _, d := range v.Disks {
		if err := check(fmt.Sprintf("disk %q.path", d.Name), d.Path); err != nil {
			return err
		}
	}
	for _, r := range v.RAM {
		if err := check(fmt.Sprintf("ram %q.path", r.Name), r.Path); err != nil {
			return err
		}
	}
	if v.DeviceState != "" {
		return check("device_state", v.DeviceState)
	}
	return nil
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
		if l.bar != nil {
			l.bar.done(l.vm.Name)
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
			"rpo_target", l.vm.RPOTarget, "predicted_lag", secs(f.PredictedLagSeconds), "live_goodput", formatRate(f.LiveGoodputBps), "plan", pc.reason)
	case pc.breachEnded:
		l.log.Info("RPO target within reach again", "rpo_target", l.vm.RPOTarget, "predicted_lag", secs(f.PredictedLagSeconds), "plan", pc.reason)
	}
	// The status file is synced to disk: rewrite it when the breach comes
	// or goes, otherwise every few seconds.
	if pc.breachBegan || pc.breachEnded || now.Sub(l.liveSaved) >= 5*l.liveEvery {
		l.status.planned(f)
		l.liveSaved = now
	}
	if l.metrics != nil {
		l.metrics.Planned(l.vm.Name, metrics.Plan{RPOTarget: l.vm.RPOTarget.D(), NextInterval: secs(f.NextEpochSeconds), PredictedLag: secs(f.PredictedLagSeconds),
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
			"rpo_target", l.vm.RPOTarget, "predicted_lag", secs(f.PredictedLagSeconds), "plan", pc.reason)
	case pc.breachEnded:
		l.log.Info("RPO target within reach again", "rpo_target", l.vm.RPOTarget, "predicted_lag", secs(f.PredictedLagSeconds), "plan", pc.reason)
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
			l.metrics.Planned(l.vm.Name, metrics.Plan{RPOTarget: l.vm.RPOTarget.D(), NextInterval: secs(f.NextEpochSeconds), PredictedLag: secs(f.PredictedLagSeconds),
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
	if l.bar != nil {
		l.bar.done(l.vm.Name)
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

// senderStatusRecorder maintains <state dir>/<vm>/status.json. Only the VM's
// loop uses it.
type senderStatusRecorder struct {
	mu   sync.Mutex // the loop's watcher writes plans while an epoch is sent
	path string
	st   senderStatus
	now  func() time.Time
	log  *slog.Logger
}

func loadSenderStatus(path, vm string, now func() time.Time, log *slog.Logger) *senderStatusRecorder {
	r := &senderStatusRecorder{path: path, now: now, log: log}
	if err := readJSON(path, &r.st); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.Warn("previous status unreadable; totals restart from zero", "err", err)
		}
		r.st = senderStatus{}
	}
	r.st.VM = vm
	return r
}

func (r *senderStatusRecorder) success(res *sender.Result, flow flowStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now().UTC()
	r.st.Epoch = res.Epoch
	r.st.Cut = res.Cut.UTC()
	r.st.CommittedAt = now
	r.st.LastResult = &epochResult{
		Epoch: res.Epoch, Base: res.Base, Items: res.Items, StartSeq: res.StartSeq,
		DataBytes: res.DataBytes, ScannedBytes: res.Scanned, WireBytes: res.WireBytes,
		ResentBytes: res.ResentBytes, Attempts: res.Attempts, DurationSeconds: res.Duration.Seconds(),
		PauseMS: ms(res.Pause), QEMUDowntimeMS: ms(res.HypervisorDowntime),
		RAMDataPages: res.RAMDataPages, RAMRefPages: res.RAMRefPages, RAMDupPages: res.RAMDupPages, RAMZeroPages: res.RAMZeroPages,
		SendSeconds: res.SendTime.Seconds(),
	}
	r.st.Flow = &flow
	if res.Pause > 0 {
		r.st.RecentPausesMS = append(r.st.RecentPausesMS, ms(res.Pause))
		if n := len(r.st.RecentPausesMS); n > maxRecentPauses {
			r.st.RecentPausesMS = r.st.RecentPausesMS[n-maxRecentPauses:]
		}
	}
	r.st.ConsecutiveFailures = 0
	r.st.GuestPaused = nil
	if res.Pause > livecut.PauseAlarm {
		r.st.LongPause = &longPause{At: now, PauseMS: ms(res.Pause), Epoch: res.Epoch}
	}
	r.st.BytesSent += res.WireBytes
	r.st.Epochs++
	r.save(now)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// planned takes the plan made from the epoch in flight, keeping what the
// status says of the last committed epoch.
func (r *senderStatusRecorder) planned(flow flowStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st.Flow == nil {
		r.st.Flow = &flowStatus{}
	}
	r.st.Flow.planned(flow)
	r.save(r.now().UTC())
}

func (r *senderStatusRecorder) failure(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now().UTC()
	r.st.ConsecutiveFailures++
	r.st.LastError = err.Error()
	r.st.LastErrorAt = now
	if errors.Is(err, livecut.ErrGuestPaused) {
		if r.st.GuestPaused == nil {
			r.st.GuestPaused = &guestPaused{Since: now}
		}
		r.st.GuestPaused.Detail = err.Error()
	}
	r.save(now)
}

// save writes the status; a failure to do so is logged, never fatal.
func (r *senderStatusRecorder) save(now time.Time) {
	r.st.Updated = now
	if err := writeJSONAtomic(r.path, &r.st); err != nil {
		r.log.Warn("cannot write sender status", "err", err)
	}
}

// vmError is the failure of one VM's loop.
type vmError struct {
	vm  string
	err error
}

func (e vmError) Error() string { return fmt.Sprintf("vm %s: %v", e.vm, e.err) }
func (e vmError) Unwrap() error { return e.err }

// vmErrors are the failures of several VMs. Its exit code is the worst of
// theirs, whatever order they failed in.
type vmErrors []vmError

func (es vmErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

func (es vmErrors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// ExitCode implements exitCoder.
func (es vmErrors) ExitCode() int {
	codes := make([]int, len(es))
	for i, e := range es {
		codes[i] = exitCode(e.err)
	}
	return worstExit(codes...)
}
