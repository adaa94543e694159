package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/tlsid"
)

func TestOptions(t *testing.T) {
	d := DefaultOptions()
	if d.IdleTimeout != 15*time.Second || d.KeepAlive != 5*time.Second || d.HandshakeTimeout != 10*time.Second {
		t.Errorf("DefaultOptions() = %+v", d)
	}
	if got := (Options{IdleTimeout: 3 * time.Second}).withDefaults().KeepAlive; got != time.Second {
		t.Errorf("keepalive derived from 3s idle = %v, want 1s", got)
	}
	tests := []struct {
		name string
		o    Options
		ok   bool
	}{
		{"zero", Options{}, true},
		{"explicit", Options{IdleTimeout: time.Minute, KeepAlive: 10 * time.Second, HandshakeTimeout: 5 * time.Second}, true},
		{"short idle only", Options{IdleTimeout: time.Second}, true},
		{"negative idle", Options{IdleTimeout: -1}, false},
		{"negative keepalive", Options{KeepAlive: -1}, false},
		{"negative handshake", Options{HandshakeTimeout: -1}, false},
		{"keepalive not below idle", Options{IdleTimeout: time.Second, KeepAlive: time.Second}, false},
		{"keepalive above default idle", Options{KeepAlive: time.Minute}, false},
	}
	for _, tc := range tests {
		if err := tc.o.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// echoServer accepts one connection and echoes its first stream. The
// result of the echo arrives on copied.
func echoServer(t *testing.T, l *Listener) (accepted <-chan *Conn, copied <-chan error) {
	t.Helper()
	acc := make(chan *Conn, 1)
	cop := make(chan error, 1)
	go func() {
		c, err := l.Accept(ctxTimeout(t, 10*time.Second))
		if err != nil {
			t.Errorf("Accept: %v", err)
			close(acc)
			return
		}
		acc <- c
		s, err := c.AcceptStream(ctxTimeout(t, 10*time.Second))
		if err != nil {
			cop <- err
			return
		}
		_, err = io.Copy(s, s)
		s.Close()
		cop <- err
	}()
	return acc, cop
}

// roundTrip sends n random bytes on a new stream and checks the echo.
func roundTrip(t *testing.T, c *Conn, n int) {
	t.Helper()
	s, err := c.OpenStream(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, n)
	rand.Read(data)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := s.Write(data); err != nil {
			t.Errorf("write: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	s.SetReadDeadline(time.Now().Add(15 * time.Second))
	back, err := io.ReadAll(s)
	wg.Wait()
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if len(back) != n || sha256.Sum256(back) != sha256.Sum256(data) {
		t.Fatalf("echo differs: sent %d bytes, got %d", n, len(back))
	}
}

func TestEcho(t *testing.T) {
	srv, cli := identity(t, "receiver"), identity(t, "sender")
	l := mustListen(t, tlsid.ServerTLS(srv, pin(cli)), fastOptions())
	accepted, copied := echoServer(t, l)

	c, err := Dial(ctxTimeout(t, 5*time.Second), l.Addr().String(), tlsid.ClientTLS(cli, pin(srv)), fastOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(0, "done")
	if got := c.Peer(); got.Fingerprint != srv.Fingerprint || got.CommonName != "receiver" {
		t.Errorf("client sees peer %+v", got)
	}
	roundTrip(t, c, 3<<20)

	sc := <-accepted
	if sc == nil {
		t.FailNow()
	}
	if got := sc.Peer(); got.Fingerprint != cli.Fingerprint || got.CommonName != "sender" {
		t.Errorf("server sees peer %+v", got)
	}
	// The client socket is bound to the wildcard address; compare ports.
	if portOf(sc.RemoteAddr()) != portOf(c.LocalAddr()) {
		t.Errorf("server sees client at %v, client is at %v", sc.RemoteAddr(), c.LocalAddr())
	}
	if err := <-copied; err != nil {
		t.Errorf("server echo: %v", err)
	}
	if c.Err() != nil {
		t.Errorf("Err() on live conn = %v", c.Err())
	}
}

func portOf(a net.Addr) string {
	_, p, _ := net.SplitHostPort(a.String())
	return p
}

func TestCATrust(t *testing.T) {
	ca := newCA(t)
	srv, cli := ca.issue(t, "receiver"), ca.issue(t, "sender")
	trust := tlsid.Trust{CAs: ca.pool()}
	l := mustListen(t, tlsid.ServerTLS(srv, trust), fastOptions())
	accepted, _ := echoServer(t, l)
	c, err := Dial(ctxTimeout(t, 5*time.Second), l.Addr().String(), tlsid.ClientTLS(cli, trust), fastOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(0, "")
	roundTrip(t, c, 64<<10)
	if sc := <-accepted; sc == nil || sc.Peer().CommonName != "sender" {
		t.Errorf("server peer: %+v", sc)
	}

	// A self-signed identity is refused by CA-only trust.
	stranger := identity(t, "stranger")
	_, err = Dial(ctxTimeout(t, 5*time.Second), l.Addr().String(), tlsid.ClientTLS(stranger, trust), fastOptions())
	if !errors.Is(err, ErrUntrustedPeer) {
		t.Errorf("stranger dial: %v, want ErrUntrustedPeer", err)
	}
}

func TestServerRefusesUnpinnedClient(t *testing.T) {
	srv, cli, other := identity(t, "receiver"), identity(t, "sender"), identity(t, "other")
	var mu sync.Mutex
	var rejects []error
	opts := fastOptions()
	opts.OnReject = func(remote net.Addr, err error) {
		mu.Lock()
		rejects = append(rejects, err)
		mu.Unlock()
	}
	l := mustListen(t, tlsid.ServerTLS(srv, pin(other)), opts)

	_, err := Dial(ctxTimeout(t, 5*time.Second), l.Addr().String(), tlsid.ClientTLS(cli, pin(srv)), fastOptions())
	if !errors.Is(err, ErrUntrustedPeer) {
		t.Fatalf("Dial: %v, want ErrUntrustedPeer", err)
	}
	for _, want := range []string{"refused our certificate", cli.Fingerprint} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("client error %q does not mention %q", err, want)
		}
	}
	t.Logf("client sees: %v", err)

	if c, err := l.Accept(ctxTimeout(t, 300*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Accept returned %v, %v; want no connection", c, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(rejects) != 1 {
		t.Fatalf("OnReject called %d times, want 1", len(rejects))
	}
	t.Logf("server reports: %v", rejects[0])
	if !errors.Is(rejects[0], ErrUntrustedPeer) || !errors.Is(rejects[0], tlsid.ErrUntrusted) ||
		!strings.Contains(rejects[0].Error(), cli.Fingerprint) {
		t.Errorf("OnReject error %q does not name the client's fingerprint", rejects[0])
	}
}

// The client skips crypto/tls's built-in verification; this proves the
// custom check refuses a server it has not pinned, over real QUIC.
func TestClientRefusesUnpinnedServer(t *testing.T) {
	srv, cli, other := identity(t, "receiver"), identity(t, "sender"), identity(t, "other")
	rejected := make(chan error, 1)
	opts := fastOptions()
	opts.OnReject = func(_ net.Addr, err error) { rejected <- err }
	l := mustListen(t, tlsid.ServerTLS(srv, pin(cli)), opts)

	_, err := Dial(ctxTimeout(t, 5*time.Second), l.Addr().String(), tlsid.ClientTLS(cli, pin(other)), fastOptions())
	if !errors.Is(err, ErrUntrustedPeer) || !errors.Is(err, tlsid.ErrUntrusted) {
		t.Fatalf("Dial: %v, want ErrUntrustedPeer", err)
	}
	for _, want := range []string{"server's certificate was not trusted", srv.Fingerprint} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("client error %q does not mention %q", err, want)
		}
	}
	t.Logf("client sees: %v", err)
	// The server never completes the handshake: nothing to accept, and it
	// did not refuse anything itself.
	if c, err := l.Accept(ctxTimeout(t, 300*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Accept returned %v, %v; want no connection", c, err)
	}
	select {
	case err := <-rejected:
		t.Errorf("server OnReject called: %v", err)
	default:
	}
}

func TestCloseError(t *testing.T) {
	srv, cli := identity(t, "receiver"), identity(t, "sender")
	l := mustListen(t, tlsid.ServerTLS(srv, pin(cli)), fastOptions())
	c, err := Dial(ctxTimeout(t, 5*time.Second), l.Addr().String(), tlsid.ClientTLS(cli, pin(srv)), fastOptions())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := l.Accept(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.OpenStream(ctxTimeout(t, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("hello"))
	ss, err := sc.AcceptStream(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(ss, make([]byte, 5))
	sc.Close(7, "epoch rejected")

	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = s.Read(make([]byte, 1))
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != 7 || ce.Reason != "epoch rejected" || !ce.Remote {
		t.Fatalf("read after peer close: %v", err)
	}
	if !errors.Is(err, net.ErrClosed) {
		t.Errorf("close error %v is not net.ErrClosed", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if !errors.As(c.Err(), &ce) {
		t.Errorf("Err() = %v", c.Err())
	}
}

func TestIdleTimeout(t *testing.T) {
	srv, cli := identity(t, "receiver"), identity(t, "sender")
	ua, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	pc := &mutedConn{uc: ua}
	defer pc.Close()
	opts := Options{IdleTimeout: 800 * time.Millisecond, KeepAlive: 200 * time.Millisecond, HandshakeTimeout: 2 * time.Second}
	l, err := listen(pc.LocalAddr().String(), tlsid.ServerTLS(srv, pin(cli)), opts, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted, copied := echoServer(t, l)
	c, err := Dial(ctxTimeout(t, 5*time.Second), pc.LocalAddr().String(), tlsid.ClientTLS(cli, pin(srv)), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(0, "")
	sc := <-accepted
	s, err := c.OpenStream(ctxTimeout(t, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	buf := []byte("ping")
	if _, err := s.Write(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, buf); err != nil {
		t.Fatal(err)
	}

	// Keepalives hold a quiet connection open past the idle timeout.
	time.Sleep(2 * opts.IdleTimeout)
	if err := c.Err(); err != nil {
		t.Fatalf("quiet connection died despite keepalives: %v", err)
	}

	pc.muted.Store(true)
	start := time.Now()
	_, err = s.Read(buf)
	elapsed := time.Since(start)
	if !errors.Is(err, ErrIdleTimeout) {
		t.Fatalf("read after peer vanished: %v, want ErrIdleTimeout", err)
	}
	t.Logf("client sees after %v: %v", elapsed.Round(time.Millisecond), err)
	// The idle clock starts at the last packet received, up to a keepalive
	// period before the mute, so only an upper bound is meaningful.
	if elapsed > 5*opts.IdleTimeout {
		t.Errorf("idle timeout after %v, configured %v", elapsed, opts.IdleTimeout)
	}
	select {
	case <-sc.Done():
		if !errors.Is(sc.Err(), ErrIdleTimeout) {
			t.Errorf("server conn ended with %v", sc.Err())
		}
	case <-time.After(3 * time.Second):
		t.Error("server conn did not time out")
	}
	if err := <-copied; !errors.Is(err, ErrIdleTimeout) {
		t.Errorf("server echo ended with %v, want ErrIdleTimeout", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	// A UDP socket that never answers.
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	cli, srv := identity(t, "sender"), identity(t, "receiver")
	opts := Options{HandshakeTimeout: 300 * time.Millisecond}
	start := time.Now()
	_, err = Dial(context.Background(), silent.LocalAddr().String(), tlsid.ClientTLS(cli, pin(srv)), opts)
	if !errors.Is(err, ErrHandshakeTimeout) {
		t.Fatalf("Dial: %v, want ErrHandshakeTimeout", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("Dial took %v", time.Since(start))
	}

	// A cancelled caller context is reported as such, not as a timeout.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Dial(ctx, silent.LocalAddr().String(), tlsid.ClientTLS(cli, pin(srv)), opts)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrHandshakeTimeout) {
		t.Errorf("Dial with cancelled ctx: %v", err)
	}
}

func TestRefusesUnauthenticatedConfigs(t *testing.T) {
	srv, cli := identity(t, "receiver"), identity(t, "sender")

	noClientAuth := tlsid.ServerTLS(srv, pin(cli))
	noClientAuth.ClientAuth = tls.NoClientCert
	if _, err := Listen("127.0.0.1:0", noClientAuth, Options{}); err == nil {
		t.Error("Listen accepted a config without client authentication")
	}
	unverified := tlsid.ServerTLS(srv, pin(cli))
	unverified.VerifyConnection = nil
	if _, err := Listen("127.0.0.1:0", unverified, Options{}); err == nil {
		t.Error("Listen accepted RequireAnyClientCert without verification")
	}
	blind := tlsid.ClientTLS(cli, pin(srv))
	blind.VerifyConnection = nil
	if _, err := Dial(context.Background(), "127.0.0.1:1", blind, Options{}); err == nil {
		t.Error("Dial accepted InsecureSkipVerify without verification")
	}
	if _, err := Listen("127.0.0.1:0", tlsid.ServerTLS(srv, pin(cli)), Options{IdleTimeout: -1}); err == nil {
		t.Error("Listen accepted invalid options")
	}
}

func TestListenerClose(t *testing.T) {
	srv, cli := identity(t, "receiver"), identity(t, "sender")
	l := mustListen(t, tlsid.ServerTLS(srv, pin(cli)), fastOptions())

	c, err := Dial(ctxTimeout(t, 5*time.Second), l.Addr().String(), tlsid.ClientTLS(cli, pin(srv)), fastOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(0, "")

	errc := make(chan error, 1)
	go func() {
		// Takes the pending connection, then blocks until Close.
		if _, err := l.Accept(context.Background()); err != nil {
			errc <- err
			return
		}
		_, err := l.Accept(context.Background())
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	l.Close()
	if err := <-errc; !errors.Is(err, ErrListenerClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
	// Accepted connections outlive the listener.
	s, err := c.OpenStream(ctxTimeout(t, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(bytes.Repeat([]byte{1}, 10)); err != nil {
		t.Errorf("write after listener close: %v", err)
	}
	if err := c.Err(); err != nil {
		t.Errorf("conn ended with listener: %v", err)
	}
}

// A listener restarted with the same reset key makes the peers of its
// predecessor's connections fail at once, not after the idle timeout.
func TestResetKeyEndsOldConnectionsOnRestart(t *testing.T) {
	srvID, cliID := identity(t, "srv"), identity(t, "cli")
	key := &[32]byte{1, 2, 3}
	opts := Options{IdleTimeout: 30 * time.Second, ResetKey: key}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := listen(pc.LocalAddr().String(), tlsid.ServerTLS(srvID, pin(cliID)), opts, pc)
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		c, err := l.Accept(ctx)
		if err == nil {
			s, err := c.AcceptStream(ctx)
			if err == nil {
				io.Copy(io.Discard, s)
			}
		}
	}()
	c, err := Dial(ctx, addr, tlsid.ClientTLS(cliID, pin(srvID)), Options{IdleTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(0, "")
	s, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("hello"))
	// The "process" dies: its socket goes first, so no close frame leaves.
	pc.Close()
	l.Close()
	l2, err := Listen(addr, tlsid.ServerTLS(srvID, pin(cliID)), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	start := time.Now()
	s.SetWriteDeadline(start.Add(5 * time.Second))
	buf := make([]byte, 1<<16)
	for {
		_, err := s.Write(buf)
		if err == nil {
			continue
		}
		if time.Since(start) >= 5*time.Second {
			t.Fatalf("old connection still open 5 s after the listener restarted: %v", err)
		}
		break
	}
	t.Logf("old connection failed %v after restart", time.Since(start))
}

// A restarted listener resets the old connection of a client that sends
// nothing but waits for an answer (a sender waiting for a commit
// acknowledgement, everything it sent acknowledged): QUIC's keep-alive
// PINGs and their retransmissions (25-byte packets) are too short to be
// answered with a stateless reset, the client's probes are not.
func TestResetReachesWaitingClient(t *testing.T) {
	srvID, cliID := identity(t, "srv"), identity(t, "cli")
	opts := Options{IdleTimeout: 30 * time.Second, ResetKey: &[32]byte{4, 5, 6}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := listen(pc.LocalAddr().String(), tlsid.ServerTLS(srvID, pin(cliID)), opts, pc)
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make(chan struct{})
	go func() {
		c, err := l.Accept(ctx)
		if err != nil {
			return
		}
		s, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.ReadFull(s, make([]byte, 5))
		close(got)
		io.Copy(io.Discard, s)
	}()
	c, err := Dial(ctx, addr, tlsid.ClientTLS(cliID, pin(srvID)), Options{IdleTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(0, "")
	s, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("hello"))
	<-got
	// A while of traffic first, so that path MTU discovery is over: its
	// large probes, which a keep-alive may ride along with, would trigger a
	// reset by chance.
	buf := make([]byte, 64<<10)
	for t0 := time.Now(); time.Since(t0) < time.Second; {
		if _, err := s.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // everything is acknowledged: nothing left to retransmit
	pc.Close()
	l.Close()
	l2, err := Listen(addr, tlsid.ServerTLS(srvID, pin(cliID)), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	start := time.Now()
	s.SetReadDeadline(start.Add(10 * time.Second))
	_, err = s.Read(make([]byte, 1))
	took := time.Since(start)
	t.Logf("waiting client's connection failed %v after the restart: %v", took.Round(time.Millisecond), err)
	if !strings.Contains(fmt.Sprint(err), "no longer knows this connection") || took > 5*time.Second {
		t.Fatalf("old connection of a waiting client: %v after %v, want a stateless reset within 5s", err, took)
	}
}
