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
// stream found worth having (it does not probe from one again after a
// reconnect), another VM's on one, and a fixed count stripes over all; the
// cap's dialer keeps the VM's own.
func TestDialerStartsWhereTheVMsLastStreamSettled(t *testing.T) {
	pipe := func(ctx context.Context) (io.ReadWriteCloser, error) {
		x, y := net.Pipe()
		go func() { io.Copy(io.Discard, y); y.Close() }()
		return x, nil
	}
	auto := &linkDialer{addr: "test", one: pipe, log: slog.New(slog.DiscardHandler), known: map[string]int{"web-1": 4}}
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
		{"the VM's level", DialerFor(cp.Dialer(auto), "web-1"), AutoConnections, 4},
		{"another VM", DialerFor(cp.Dialer(auto), "db-1"), AutoConnections, 1},
		{"no VM", auto, AutoConnections, 1},
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
