package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/drsync/drsync/metrics"
	"github.com/drsync/drsync/receiver/serve"
	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/vfs"
)

func receiveCommand() *command {
	var configPath string
	var lf logFlags
	c := &command{
		name:  "receive",
		short: "accept epochs from senders and keep the replicas (daemon)",
		args:  "--config FILE [--log-level LEVEL] [--log-json]",
		summary: `Keep the replicas of the VMs that the configured senders send.
Validates the configuration, locks the storage directory, finishes whatever
a crash left half-applied, then listens (QUIC, mutual TLS) until SIGINT or
SIGTERM. Writes <storage dir>/<vm>/STATUS.json after every committed epoch.`,
		flags: func(set *flag.FlagSet) {
			set.StringVar(&configPath, "config", "", "receiver configuration file (required)")
			lf.register(set)
		},
	}
	c.run = func(ctx context.Context, e *env, _ *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if configPath == "" {
			return usagef("--config is required")
		}
		log, err := lf.logger(e.stderr)
		if err != nil {
			return err
		}
		cfg, err := loadReceiverConfig(configPath)
		if err != nil {
			return err
		}
		return receive(ctx, e, cfg, log)
	}
	return c
}

// receive builds the serving loop's options from the configuration and
// runs it.
func receive(ctx context.Context, e *env, cfg *ReceiverConfig, log *slog.Logger) error {
	// Everything the configuration names is loaded before anything starts,
	// so a mistake is reported at once rather than at the first connection.
	id, err := cfg.Identity.load(cfg.file)
	if err != nil {
		return err
	}
	trust, err := cfg.trust()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	topts := cfg.transportOptions()
	// A restarted receiver resets its predecessor's connections at once,
	// so senders reconnect and resume without waiting out the idle timeout.
	topts.ResetKey = serve.ResetKey(id)
	topts.OnReject = func(remote net.Addr, err error) {
		log.Warn("refused a connection: certificate not trusted; pin its fingerprint in a [[sender]] entry if it is legitimate", "remote", remote, "err", err)
	}
	o := serve.Options{Listen: cfg.Listen, TLS: tlsid.ServerTLS(id, trust), Transport: topts, StorageDir: cfg.Storage.Dir,
		Authorize: cfg.set.Access.Authorizer(), AckBytes: cfg.set.AckBytes, KeepPoints: cfg.Storage.KeepPoints, Backend: cfg.set.Backend,
		WarmPages: cfg.Storage.warm(), WarmMaxBytes: int64(cfg.Storage.WarmMax), VMs: cfg.vmNames(),
		Now: e.now, Logger: log, Fingerprint: id.Fingerprint, Senders: len(cfg.Senders), Listening: e.listening}
	if cfg.Metrics != "" {
		o.Metrics = metrics.NewReceiver(e.now)
		o.Drills = func() map[string]metrics.Drill {
			out := map[string]metrics.Drill{}
			for vm, r := range runbook.ReadDrillResults(vfs.Default, cfg.Storage.Dir) {
				out[vm] = metrics.Drill{At: r.At, OK: r.OK, LastSuccess: r.LastSuccess}
			}
			return out
		}
	}
	srv, err := serve.Open(o)
	if err != nil {
		return err
	}
	defer srv.Close()
	if o.Metrics != nil {
		if err := serveMetrics(ctx, cfg.file, cfg.Metrics, o.Metrics.Handler(), receiverPage(e, cfg, srv.Store()), log); err != nil {
			return err
		}
	}
	err = srv.Run(ctx)
	if le, ok := errors.AsType[*serve.ListenError](err); ok {
		return fmt.Errorf("listen on %s (key listen in %s): %w", le.Addr, cfg.file, le.Err)
	}
	return err
}
