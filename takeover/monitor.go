package takeover

import (
	"context"

	"github.com/drsync/drsync/qmp"
)

// Monitor is the started VM's monitor as a takeover uses it: a few
// commands (query-status, cont, query-migrate) and the end of the
// session. *qmp.Session implements it; QMP passed through libvirt can be
// another. A refused command is a *qmp.CommandError, as with qmp.
type Monitor interface {
	Execute(ctx context.Context, cmd string, args, reply any) error
	Close() error
}

// DialFunc connects to the monitor of the VM at socket.
type DialFunc func(ctx context.Context, socket string) (Monitor, error)

// DialQMP is the DialFunc of a plain QMP socket.
func DialQMP(ctx context.Context, socket string) (Monitor, error) {
	s, err := qmp.Dial(ctx, socket, qmp.Options{})
	if err != nil {
		return nil, err // not a typed nil in an interface
	}
	return s, nil
}

var _ Monitor = (*qmp.Session)(nil)
