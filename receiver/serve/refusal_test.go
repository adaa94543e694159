package serve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/wire"
)

// A sender refused over a striped stream reads why, whichever of the
// stream's connections carries the refusal: the receiver closes none of
// them while the refusal may still be in flight on it. (Closing another
// connection than the refusal's at once lost the refusal now and then:
// the sender saw only that its stream ended.) Each refusal takes about a
// second: each side waits for the other to close, until the sender's
// linger ends.
func TestStripedRefusalIsRead(t *testing.T) {
	rid, err := tlsid.WriteIdentity(t.TempDir(), "receiver")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := tlsid.WriteIdentity(t.TempDir(), "sender")
	if err != nil {
		t.Fatal(err)
	}
	addr := make(chan net.Addr, 1)
	srv, err := Open(Options{
		Listen: "127.0.0.1:0", TLS: tlsid.ServerTLS(rid, tlsid.Trust{Fingerprints: []string{sid.Fingerprint}}),
		StorageDir: t.TempDir(),
		Authorize: func(_ receiver.Peer, vm string) error {
			return fmt.Errorf("VM %s: %w", vm, receiver.ErrUnauthorized)
		},
		Listening: func(a net.Addr) { addr <- a },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var a net.Addr
	select {
	case a = <-addr:
	case err := <-done:
		t.Fatal(err)
	}
	dial, _, err := agent.Dial(agent.DialOptions{Address: a.String(), Connections: 8,
		TLS: tlsid.ClientTLS(sid, tlsid.Trust{Fingerprints: []string{rid.Fingerprint}})})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		func() {
			dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
			defer dcancel()
			rw, err := dial.Dial(dctx)
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			defer rw.Close()
			if err := wire.NewEncoder(rw, wire.EncoderOptions{}).Encode(&wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.Version, VM: "b"}); err != nil {
				t.Fatalf("stream %d: hello: %v", i, err)
			}
			f, err := wire.NewDecoder(rw, wire.DecoderOptions{}).Decode()
			if err != nil {
				t.Fatalf("stream %d: the refusal was lost: %v", i, err)
			}
			e, ok := f.(*wire.Error)
			if !ok || !strings.Contains(e.Message, "not authorized") {
				t.Fatalf("stream %d: %T %+v, want an Error frame saying not authorized", i, f, f)
			}
		}()
	}
	if err := ctx.Err(); errors.Is(err, context.Canceled) {
		t.Fatal("the server stopped early")
	}
}
