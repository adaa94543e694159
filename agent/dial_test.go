package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/stripe"
)

// An auto stream of a VM starts on as many connections as the VM's last
// stream found worth having (it does not probe again after a reconnect),
// a VM's first where another VM's stream over the same path settled, or,
// on a path no stream measured, on AutoStartConnections; a fixed count
// stripes over all; the cap's dialer keeps the VM's own.
func TestDialerStartsWhereTheVMsLastStreamSettled(t *testing.T) {
	pipe := func(ctx context.Context) (io.ReadWriteCloser, error) {
		x, y := net.Pipe()
		go func() { io.Copy(io.Discard, y); y.Close() }()
		return x, nil
	}
	auto := &linkDialer{addr: "test", one: pipe, log: slog.New(slog.DiscardHandler), known: map[string]int{"web-1": 8}, path: 2}
	fresh := &linkDialer{addr: "test", one: pipe, log: slog.New(slog.DiscardHandler), known: map[string]int{}}
	fixed := &linkDialer{addr: "test", one: pipe, n: 3, log: slog.New(slog.DiscardHandler), known: map[string]int{}}
	cp, err := NewCap(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		d          sender.Dialer
		subs, want int
	}{
		{"the VM's level", DialerFor(cp.Dialer(auto), "web-1"), AutoConnections, 8},
		{"another VM: the path's level", DialerFor(cp.Dialer(auto), "db-1"), AutoConnections, 2},
		{"no VM", auto, AutoConnections, 2},
		{"a path not measured", DialerFor(cp.Dialer(fresh), "db-1"), AutoConnections, AutoStartConnections},
		{"fixed", DialerFor(cp.Dialer(fixed), "web-1"), 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rw, err := tc.d.Dial(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer rw.Close()
			if cc, ok := rw.(*capConn); ok {
				rw = cc.ReadWriteCloser
			}
			c, ok := rw.(*stripe.Conn)
			if !ok {
				t.Fatalf("dialled a %T, want a striped stream", rw)
			}
			if c.Active() != tc.want {
				t.Errorf("%d connections carry data at first, want %d", c.Active(), tc.want)
			}
		})
	}
}
