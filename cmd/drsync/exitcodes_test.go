package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/drsync/drsync/agent"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/receiver/serve"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/wire"
)

func TestExitCode(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("vm web-1: epoch 3: %w", err) }
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, exitOK},
		{"plain failure", errors.New("disk on fire"), exitFailure},
		{"network", wrap(io.ErrUnexpectedEOF), exitFailure},
		{"canceled", context.Canceled, exitFailure},
		{"usage", usagef("--config is required"), exitUsage},
		{"config", wrap(&configError{"f.toml", "listen", errors.New("bad")}), exitUsage},
		{"untrusted peer", wrap(fmt.Errorf("dial x: %w: refused", transport.ErrUntrustedPeer)), exitRefused},
		{"untrusted certificate", wrap(&tlsid.UntrustedError{Fingerprint: fpA, Reason: "not pinned"}), exitRefused},
		{"unauthorized locally", fmt.Errorf("%w: nope", receiver.ErrUnauthorized), exitRefused},
		{"unauthorized by peer", wrap(&wire.Error{Code: wire.ErrUnauthorized, Message: "no"}), exitRefused},
		{"version by peer", wrap(&wire.Error{Code: wire.ErrVersion}), exitRefused},
		{"busy by peer", wrap(&wire.Error{Code: wire.ErrBusy}), exitBusy},
		{"storage by peer", wrap(&wire.Error{Code: wire.ErrStorage}), exitFailure},
		{"protocol by peer", wrap(&wire.Error{Code: wire.ErrProtocol}), exitFailure},
		{"replica locked", fmt.Errorf("verify: %w", replica.ErrLocked), exitBusy},
		{"unusable source", wrap(fmt.Errorf("RAM pc.ram: 4097 bytes: %w", sender.ErrUnusableSource)), exitUsage},
		{"unsupported QEMU", wrap(fmt.Errorf("qmp: QEMU 8.2.0: %w", qmp.ErrUnsupportedVersion)), exitUsage},
		{"disk node not found", wrap(fmt.Errorf("livecut: %w", livecut.ErrDiskNotFound)), exitUsage},
		{"QMP socket missing", wrap(fmt.Errorf("livecut: %w", qmp.ErrNoSocket)), exitFailure},
		{"VM went away", wrap(fmt.Errorf("livecut: %w", livecut.ErrVMGone)), exitFailure},
		{"storage lock", fmt.Errorf("%w: held", serve.ErrLockBusy), exitBusy},
		{"mismatch", fmt.Errorf("%w: 2 problems", errMismatch), exitMismatch},
		{"corrupt replica", fmt.Errorf("manifest: %w", replica.ErrCorrupt), exitMismatch},
		{"several VMs: worst wins", agent.VMErrors{
			{VM: "a", Err: &wire.Error{Code: wire.ErrBusy}},
			{VM: "b", Err: transport.ErrUntrustedPeer},
			{VM: "c", Err: errors.New("timeout")},
		}, exitRefused},
		{"several VMs: busy over failure", agent.VMErrors{
			{VM: "a", Err: errors.New("timeout")},
			{VM: "b", Err: &wire.Error{Code: wire.ErrBusy}},
		}, exitBusy},
	}
	for _, tc := range tests {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("%s: exitCode(%v) = %d, want %d", tc.name, tc.err, got, tc.want)
		}
	}
}
