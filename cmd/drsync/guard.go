package main

import (
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/drsync/drsync/agent"
)

// guardCommandName is the hidden subcommand "drsync send" starts itself
// again as, so that a guest a dead sender left paused is resumed (see
// agent.StartGuard).
const guardCommandName = "guest-guard"

// runGuard is the hidden guest-guard command.
func runGuard(e *env, stdin io.Reader) int {
	// Stopping the sender's service signals every process of it; the
	// guard still has to do its part once the sender is gone, which takes
	// milliseconds, and exits by itself then.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE, syscall.SIGTTOU)
	log := slog.New(slog.NewTextHandler(e.stderr, nil)).With("pid", os.Getpid())
	if err := agent.RunGuard(stdin, log, e.now); err != nil {
		return exitFailure
	}
	return exitOK
}
