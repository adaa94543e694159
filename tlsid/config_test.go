package tlsid

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/drsync/drsync/wire"
)

// handshake runs a TLS handshake over loopback TCP, then one byte each way
// so that both sides learn the other's verdict, and returns each side's error.
func handshake(t *testing.T, client, server *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(5 * time.Second)
	done := make(chan error, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer s.Close()
		s.SetDeadline(deadline)
		ts := tls.Server(s, server)
		if err := ts.Handshake(); err != nil {
			done <- err
			return
		}
		b := make([]byte, 1)
		if _, err := ts.Read(b); err != nil {
			done <- err
			return
		}
		_, err = ts.Write(b)
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(deadline)
	tc := tls.Client(c, client)
	clientErr = tc.Handshake()
	if clientErr == nil {
		// In TLS 1.3 the client finishes before the server has checked the
		// client certificate; the echo surfaces the server's verdict.
		if _, clientErr = tc.Write([]byte{1}); clientErr == nil {
			_, clientErr = tc.Read(make([]byte, 1))
		}
	}
	c.Close()
	return clientErr, <-done
}

func TestTLSConfigs(t *testing.T) {
	srv := generated(t, "receiver")
	cli := generated(t, "sender")
	stranger := generated(t, "stranger")
	pin := func(ids ...Identity) Trust {
		var tr Trust
		for _, id := range ids {
			tr.Fingerprints = append(tr.Fingerprints, id.Fingerprint)
		}
		return tr
	}

	for _, conf := range []*tls.Config{ServerTLS(srv, pin(cli)), ClientTLS(cli, pin(srv))} {
		if conf.MinVersion != tls.VersionTLS13 || conf.MaxVersion != tls.VersionTLS13 {
			t.Errorf("versions %x-%x, want TLS 1.3 only", conf.MinVersion, conf.MaxVersion)
		}
		if len(conf.NextProtos) != 1 || conf.NextProtos[0] != wire.ALPN {
			t.Errorf("NextProtos = %v", conf.NextProtos)
		}
		if conf.VerifyConnection == nil {
			t.Error("no VerifyConnection: nothing would authenticate the peer")
		}
	}
	if ServerTLS(srv, pin(cli)).ClientAuth != tls.RequireAnyClientCert {
		t.Error("server does not require a client certificate")
	}

	t.Run("both pinned", func(t *testing.T) {
		cerr, serr := handshake(t, ClientTLS(cli, pin(srv)), ServerTLS(srv, pin(cli)))
		if cerr != nil || serr != nil {
			t.Fatalf("client %v, server %v", cerr, serr)
		}
	})

	// The client skips crypto/tls's own verification; this proves its
	// custom check still refuses a server it has not pinned.
	t.Run("client refuses unpinned server", func(t *testing.T) {
		cerr, serr := handshake(t, ClientTLS(cli, pin(stranger)), ServerTLS(srv, pin(cli)))
		if !errors.Is(cerr, ErrUntrusted) {
			t.Fatalf("client error %v, want ErrUntrusted", cerr)
		}
		var ue *UntrustedError
		if !errors.As(cerr, &ue) || ue.Fingerprint != srv.Fingerprint {
			t.Errorf("client error does not name the server's fingerprint: %v", cerr)
		}
		if serr == nil {
			t.Error("server completed a handshake the client refused")
		}
	})

	t.Run("server refuses unpinned client", func(t *testing.T) {
		cerr, serr := handshake(t, ClientTLS(cli, pin(srv)), ServerTLS(srv, pin(stranger)))
		if !errors.Is(serr, ErrUntrusted) {
			t.Fatalf("server error %v, want ErrUntrusted", serr)
		}
		if cerr == nil {
			t.Error("client saw no error")
		}
	})

	t.Run("server requires a client certificate", func(t *testing.T) {
		anon := ClientTLS(cli, pin(srv))
		anon.Certificates = nil
		_, serr := handshake(t, anon, ServerTLS(srv, pin(cli)))
		if serr == nil {
			t.Fatal("server accepted a client without certificate")
		}
	})

	t.Run("later edits to trust do not leak into config", func(t *testing.T) {
		tr := pin(srv)
		conf := ClientTLS(cli, tr)
		tr.Fingerprints[0] = stranger.Fingerprint
		cerr, serr := handshake(t, conf, ServerTLS(srv, pin(cli)))
		if cerr != nil || serr != nil {
			t.Fatalf("client %v, server %v", cerr, serr)
		}
	})
}
