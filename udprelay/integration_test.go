package udprelay_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/udprelay"
)

// A transport connection through the relay rides out an outage shorter than
// its idle timeout and fails with an idle-timeout error on a longer one.
func TestTransportThroughOutages(t *testing.T) {
	if testing.Short() {
		t.Skip("takes several seconds")
	}
	srv, err := tlsid.WriteIdentity(t.TempDir(), "receiver")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := tlsid.WriteIdentity(t.TempDir(), "sender")
	if err != nil {
		t.Fatal(err)
	}
	opts := transport.Options{IdleTimeout: 3 * time.Second, KeepAlive: 300 * time.Millisecond, HandshakeTimeout: 2 * time.Second}

	l, err := transport.Listen("127.0.0.1:0", tlsid.ServerTLS(srv, tlsid.Trust{Fingerprints: []string{cli.Fingerprint}}), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	relay, err := udprelay.NewWithOptions("127.0.0.1:0", l.Addr().String(), udprelay.Options{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	serverErr := make(chan error, 1)
	go func() {
		c, err := l.Accept(ctx)
		if err != nil {
			serverErr <- err
			return
		}
		s, err := c.AcceptStream(ctx)
		if err != nil {
			serverErr <- err
			return
		}
		_, err = io.Copy(s, s) // echo until the connection dies
		serverErr <- err
	}()

	c, err := transport.Dial(ctx, relay.Addr().String(), tlsid.ClientTLS(cli, tlsid.Trust{Fingerprints: []string{srv.Fingerprint}}), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(0, "")
	s, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	echo := func(msg string) error {
		if _, err := s.Write([]byte(msg)); err != nil {
			return err
		}
		s.SetReadDeadline(time.Now().Add(5 * time.Second))
		back := make([]byte, len(msg))
		if _, err := io.ReadFull(s, back); err != nil {
			return err
		}
		if string(back) != msg {
			t.Fatalf("echo %q, sent %q", back, msg)
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}

	relay.SetDown(true)
	time.Sleep(time.Second)
	relay.SetDown(false)
	if st := relay.Stats(); st.ToUpstream.DroppedPackets == 0 {
		t.Error("no keepalive was dropped during the outage")
	}
	if err := echo("after a short outage"); err != nil {
		t.Fatalf("connection did not survive a 1s outage: %v", err)
	}

	relay.SetDown(true)
	start := time.Now()
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = s.Read(make([]byte, 1))
	if !errors.Is(err, transport.ErrIdleTimeout) {
		t.Fatalf("read during a long outage: %v, want ErrIdleTimeout", err)
	}
	t.Logf("after %v: %v", time.Since(start).Round(10*time.Millisecond), err)
	if d := time.Since(start); d < opts.IdleTimeout/2 {
		t.Errorf("idle timeout after only %v", d)
	}
	select {
	case err := <-serverErr:
		if !errors.Is(err, transport.ErrIdleTimeout) {
			t.Errorf("server side ended with %v, want ErrIdleTimeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("server side did not notice the outage")
	}
}
