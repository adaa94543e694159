package livecut

import (
	"context"

	"github.com/drsync/drsync/qmp"
)

// Monitor is the VM's monitor as livecut uses it: QMP commands with
// arguments and a reply, the events a cut waits for (STOP, MIGRATION,
// SHUTDOWN), the QEMU version, and the connection's end. *qmp.Session
// implements it over a QMP socket; livecuttest.Fake is a scripted QEMU for
// tests of the cut sequence; QMP passed through libvirt can be another.
//
// Implementations follow qmp's conventions, which livecut branches on:
// QEMU's refusal of a command is a *qmp.CommandError, a lost connection
// wraps qmp.ErrDisconnected (and, after a SHUTDOWN event, names its
// reason), and Execute returns once ctx ends. livecuttest.TestMonitor
// checks an implementation for them.
type Monitor interface {
	// Execute runs cmd with args (nil for none) and decodes QEMU's return
	// value into reply (nil to ignore it).
	Execute(ctx context.Context, cmd string, args, reply any) error
	// Subscribe queues the events named (all if none) from now on.
	Subscribe(names ...string) qmp.Events
	// Version is QEMU's, from the monitor's greeting.
	Version() qmp.Version
	// Done is closed when the connection ends; Err then says why.
	Done() <-chan struct{}
	Err() error
	Close() error
}

// DialFunc connects to the monitor of the VM at socket; o carries the
// version check and greeting timeout. Its errors follow qmp.Dial's:
// qmp.ErrNoSocket when nothing listens, qmp.ErrBusy when another client
// holds the monitor.
type DialFunc func(ctx context.Context, socket string, o qmp.Options) (Monitor, error)

// DialQMP is the DialFunc of a plain QMP socket.
func DialQMP(ctx context.Context, socket string, o qmp.Options) (Monitor, error) {
	s, err := qmp.Dial(ctx, socket, o)
	if err != nil {
		return nil, err // not a typed nil in an interface
	}
	return s, nil
}

var _ Monitor = (*qmp.Session)(nil)
