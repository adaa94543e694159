package main

import (
	"errors"
	"fmt"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/receiver/serve"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/wire"
)

// Exit codes of every subcommand. Scripts and timers branch on them, so they
// are part of the interface: never renumber.
const (
	exitOK       = 0 // success
	exitFailure  = 1 // runtime failure (network, disk, the source, ...)
	exitUsage    = 2 // bad command line or configuration
	exitMismatch = 3 // verify found the replica does not match its manifest
	exitRefused  = 4 // the peer refused us: untrusted certificate, not authorized, no common version
	exitBusy     = 5 // the replica or the storage directory is locked by someone else
)

// exitCodesHelp is the table printed by "drsync help".
const exitCodesHelp = `Exit codes:
  0  success
  1  runtime failure (network, disk, source images, ...)
  2  usage or configuration error
  3  verify found mismatches, or replica metadata is corrupt
  4  refused by the peer: untrusted certificate, not authorized, version mismatch
  5  replica or storage lock busy (another receiver, an epoch being applied)
`

// usageError is a bad command line. The message is printed with a hint to
// run "drsync <cmd> -h".
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// configError is a configuration problem: File is the config file, Key the
// offending key (may be empty when the problem is the file as a whole).
type configError struct {
	File string
	Key  string
	Err  error
}

func (e *configError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("config %s: %v", e.File, e.Err)
	}
	return fmt.Sprintf("config %s: %s: %v", e.File, e.Key, e.Err)
}

func (e *configError) Unwrap() error { return e.Err }

// errMismatch marks a verify run that found problems in the replica.
var errMismatch = errors.New("replica does not match its manifest")

// exitCoder is an error that knows its exit code.
type exitCoder interface{ ExitCode() int }

// exitCode maps an error to the process exit code. Order matters: the most
// specific classification wins.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	// Several VMs failed: the worst of theirs, whatever order they failed in.
	if es, ok := errors.AsType[agent.VMErrors](err); ok {
		codes := make([]int, len(es))
		for i, e := range es {
			codes[i] = exitCode(e.Err)
		}
		return worstExit(codes...)
	}
	var ec exitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	var ue *usageError
	var ce *configError
	if errors.As(err, &ue) || errors.As(err, &ce) {
		return exitUsage
	}
	// A refusal the receiver sent over the wire says exactly what happened.
	var we *wire.Error
	if errors.As(err, &we) {
		switch we.Code {
		case wire.ErrUnauthorized, wire.ErrVersion, wire.ErrTakenOver:
			return exitRefused
		case wire.ErrBusy:
			return exitBusy
		}
		return exitFailure
	}
	switch {
	case errors.Is(err, transport.ErrUntrustedPeer),
		errors.Is(err, tlsid.ErrUntrusted),
		errors.Is(err, receiver.ErrUnauthorized):
		return exitRefused
	case errors.Is(err, qmp.ErrUnsupportedVersion), errors.Is(err, livecut.ErrDiskNotFound), errors.Is(err, livecut.ErrSwitchedBack),
		errors.Is(err, sender.ErrUnusableSource):
		// The VM is not what the configuration describes.
		return exitUsage
	case errors.Is(err, replica.ErrLocked), errors.Is(err, serve.ErrLockBusy):
		return exitBusy
	case errors.Is(err, errMismatch), errors.Is(err, replica.ErrCorrupt):
		return exitMismatch
	}
	return exitFailure
}

// worstExit picks one exit code for several outcomes (one per VM): a refusal
// or a configuration problem needs an operator more urgently than a busy
// replica, which needs one more than a transient failure.
func worstExit(codes ...int) int {
	rank := map[int]int{exitOK: 0, exitFailure: 1, exitBusy: 2, exitMismatch: 3, exitRefused: 4, exitUsage: 5}
	worst := exitOK
	for _, c := range codes {
		if rank[c] > rank[worst] {
			worst = c
		}
	}
	return worst
}
