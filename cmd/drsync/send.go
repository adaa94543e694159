package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/metrics"
	"github.com/drsync/drsync/tlsid"
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
without running in two places. This QEMU then stays paused; stop it.
SIGHUP reloads the configuration (see README); --once ignores it.`,
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
		vms, err := cfg.selectVMs(vmName)
		if err != nil {
			return usagef("%v", err)
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
		agent.SetCollectorGoal(os.LookupEnv)
		if final {
			for _, v := range vms {
				if !v.Live() {
					return usagef("--final: vm %q is not a live VM (qmp); there is nothing to pause", v.Name)
				}
			}
		}
		return send(ctx, e, cfg, vms, sendOptions{once: once, final: final, retries: retries, log: log, bar: bar, vmName: vmName})
	}
	return c
}

// faultEnv names a fault point for tests: "kill-after-migration" makes
// the sender SIGKILL itself when a cut's migration completes, the moment
// its death leaves the guest stopped.
const faultEnv = "DRSYNC_FAULT"

// guardPipes are the write ends of the guest guards' pipes: they stay
// open, and referenced, for the sender's whole life.
var guardPipes []*os.File

type sendOptions struct {
	once    bool
	final   bool // the guest stays paused after the cut (switch-back)
	retries int  // per epoch; negative: until success
	log     *slog.Logger
	bar     *progressBar // nil unless stderr is a terminal
	vmName  string       // --vm: only this VM, also after a reload
}

// selectVMs returns the VMs of c to replicate: the one named, or all.
func (c *SenderConfig) selectVMs(name string) ([]*agent.VMSettings, error) {
	var vms []*agent.VMSettings
	var names []string
	for i := range c.vms {
		if name == "" || c.vms[i].Name == name {
			vms = append(vms, &c.vms[i])
		}
		names = append(names, c.vms[i].Name)
	}
	if len(vms) == 0 {
		return nil, fmt.Errorf("--vm %q: no such VM in %s (configured: %s)", name, c.file, strings.Join(names, ", "))
	}
	return vms, nil
}

// send builds the agent's options from the configuration and runs it.
func send(ctx context.Context, e *env, cfg *SenderConfig, vms []*agent.VMSettings, o sendOptions) error {
	id, err := cfg.Identity.load(cfg.file)
	if err != nil {
		return err
	}
	trust, err := cfg.trust()
	if err != nil {
		return err
	}
	// One cap for all VMs: the link's. Each VM's epochs are planned with
	// an equal share of it.
	cp := float64(cfg.Receiver.BandwidthCap)
	dialer, limit, err := agent.Dial(agent.DialOptions{Address: cfg.Receiver.Address, TLS: tlsid.ClientTLS(id, trust), Transport: cfg.transportOptions(),
		Connections: cfg.peer.Connections, Cap: cp, Now: e.now, Logger: o.log})
	if err != nil {
		return &configError{cfg.file, "receiver.bandwidth_cap", err}
	}
	ao := agent.Options{Dialer: dialer, Once: o.once, Final: o.final, Retries: o.retries, CapShare: cp / float64(len(vms)),
		Cap: limit, BandwidthCap: cp,
		Logger: o.log, Receiver: cfg.Receiver.Address, Fingerprint: id.Fingerprint, Now: e.now,
		StartGuard: func(vms []agent.GuardVM) (err error) {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("start the guest guard: %w", err)
			}
			// One guard per call (a reload adds VMs): every pipe stays open.
			p, err := agent.StartGuard([]string{exe, guardCommandName}, vms, o.log)
			guardPipes = append(guardPipes, p) // nil if it failed
			return err
		}}
	if o.bar != nil {
		ao.Progress, ao.EpochDone = o.bar.update, o.bar.done
	}
	if cfg.Metrics != "" {
		ao.Metrics = metrics.NewSender(e.now)
		if err := serveMetrics(ctx, cfg.file, cfg.Metrics, ao.Metrics.Handler(), senderPage(e, cfg, vms), o.log); err != nil {
			return err
		}
	}
	if ao.VMs, err = cfg.agentVMs(vms, e.now); err != nil {
		return err
	}
	ao.Groups = groupcut.Select(cfg.groups, func(vm string) bool {
		return slices.ContainsFunc(vms, func(v *agent.VMSettings) bool { return v.Name == vm })
	}, o.final)
	ao.GroupIdentity = &id
	a, err := agent.New(ao)
	if err != nil {
		if se, ok := errors.AsType[*agent.SetupError](err); ok {
			return &configError{cfg.file, fmt.Sprintf("vm %q", se.VM), se.Err}
		}
		return err
	}
	defer a.Close()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP) // with --once: logged and ignored
	defer signal.Stop(hup)
	go a.ReloadOn(ctx, hup, func() (agent.Options, error) { return reloadOptions(e, cfg, ao, o.vmName) })
	return a.Run(ctx)
}

// reloadOptions reads the configuration file again into base. The receiver
// (but its bandwidth cap), the identity and metrics need a restart.
func reloadOptions(e *env, cur *SenderConfig, base agent.Options, vmName string) (agent.Options, error) {
	cfg, err := loadSenderConfig(cur.file)
	if err != nil {
		return base, err
	}
	fixed := func(c *SenderConfig) any { r := c.Receiver; r.BandwidthCap = 0; return []any{r, c.Identity, c.Metrics} }
	if !reflect.DeepEqual(fixed(cfg), fixed(cur)) {
		return base, fmt.Errorf("%s: [receiver] (but bandwidth_cap), [identity] or metrics changed: %w", cfg.file, agent.ErrNeedsRestart)
	}
	vms, err := cfg.selectVMs(vmName)
	if err != nil {
		return base, err
	}
	cp := float64(cfg.Receiver.BandwidthCap)
	base.BandwidthCap, base.CapShare = cp, cp/float64(len(vms))
	base.VMs, err = cfg.agentVMs(vms, e.now)
	return base, err
}

// agentVMs converts the VMs' entries to the agent's options.
func (c *SenderConfig) agentVMs(vms []*agent.VMSettings, now func() time.Time) ([]agent.VM, error) {
	out := make([]agent.VM, 0, len(vms))
	for _, v := range vms {
		av, err := c.agentVM(v, now)
		if err != nil {
			return nil, err
		}
		out = append(out, av)
	}
	return out, nil
}

// agentVM converts a VM's entry to the agent's options, checking first
// that its images exist.
func (c *SenderConfig) agentVM(v *agent.VMSettings, now func() time.Time) (agent.VM, error) {
	av := v.Options(c.stateDir(v.Name), now)
	// A domain's disks and their nodes are found in the running domain.
	if err := v.Libvirt.ResolveDisks(av.Live); av.Live != nil && err != nil {
		return av, fmt.Errorf("vm %q: %w", v.Name, err)
	}
	if av.Live != nil && os.Getenv(faultEnv) == "kill-after-migration" {
		av.Live.AfterMigration = func() { syscall.Kill(os.Getpid(), syscall.SIGKILL) }
	}
	if av.Files != nil {
		return av, configErr(c.file, v.CheckImages())
	}
	return av, nil
}
