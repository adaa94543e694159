package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/drsync/drsync/tlsid"
)

// admitByte is written by the listener on its admission stream.
const admitByte = 0xd5

// Conn is an established, mutually authenticated connection.
type Conn struct {
	qc   *quic.Conn
	peer tlsid.Peer
	ec   errContext
}

// Stream is one bidirectional byte stream of a Conn. Close ends the write
// side only (the peer reads io.EOF); reading goes on until the peer closes
// its side. Errors are translated like the Conn's.
type Stream interface {
	io.ReadWriteCloser
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

func newConn(qc *quic.Conn, server bool, o Options) (*Conn, error) {
	cs := qc.ConnectionState().TLS
	if len(cs.PeerCertificates) == 0 {
		// Unreachable with configs that pass checkTLS, kept as a backstop.
		return nil, errors.New("peer presented no certificate")
	}
	c := &Conn{
		qc:   qc,
		peer: tlsid.PeerOf(cs.PeerCertificates[0]),
		ec: errContext{
			server:      server,
			remote:      qc.RemoteAddr().String(),
			idleTimeout: o.IdleTimeout,
			hsTimeout:   o.HandshakeTimeout,
		},
	}
	return c, nil
}

// Dial connects to a listener at addr and returns once the server has
// accepted our certificate. tlsConf must present a certificate and verify
// the server's (see tlsid.ClientTLS).
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, opts Options) (*Conn, error) {
	return dial(ctx, addr, tlsConf, opts, nil)
}

// dial takes an optional packet conn so tests can interfere with packets.
func dial(ctx context.Context, addr string, tlsConf *tls.Config, opts Options, pc net.PacketConn) (*Conn, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	if err := checkTLS(tlsConf, false); err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	ec := errContext{remote: addr, self: selfFingerprint(tlsConf), idleTimeout: opts.IdleTimeout, hsTimeout: opts.HandshakeTimeout}
	hctx, cancel := context.WithTimeout(ctx, opts.HandshakeTimeout)
	defer cancel()

	var qc *quic.Conn
	var err error
	if pc == nil {
		qc, err = quic.DialAddr(hctx, addr, tlsConf.Clone(), opts.quicConfig(false))
	} else {
		var ua *net.UDPAddr
		if ua, err = net.ResolveUDPAddr("udp", addr); err == nil {
			qc, err = quic.Dial(hctx, pc, ua, tlsConf.Clone(), opts.quicConfig(false))
		}
	}
	if err != nil {
		return nil, ec.wrapDial(ctx, hctx, err)
	}
	if err := awaitAdmission(hctx, qc); err != nil {
		qc.CloseWithError(0, "")
		return nil, ec.wrapDial(ctx, hctx, err)
	}
	c, err := newConn(qc, false, opts)
	if err != nil {
		qc.CloseWithError(0, "")
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c.ec.self = ec.self
	go probe(qc, opts.ResetProbe)
	return c, nil
}

// probeSize is the payload of a reset probe: its packet is well over the
// 42 bytes below which a listener sends no stateless reset.
const probeSize = 48

// probe sends a small datagram every period until the connection ends, so
// that a restarted listener always has a packet to answer with a stateless
// reset (see Options.ResetProbe). A peer that does not take datagrams (an
// older listener) is not probed.
func probe(qc *quic.Conn, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	p := make([]byte, probeSize)
	for {
		select {
		case <-qc.Context().Done():
			return
		case <-t.C:
		}
		if err := qc.SendDatagram(p); err != nil {
			return
		}
	}
}

// awaitAdmission waits for the listener's admission byte. If the server
// refused our certificate, the connection is closed instead and the error
// says so.
func awaitAdmission(ctx context.Context, qc *quic.Conn) error {
	rs, err := qc.AcceptUniStream(ctx)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		rs.SetReadDeadline(dl)
	}
	var b [1]byte
	if _, err := io.ReadFull(rs, b[:]); err != nil {
		return err
	}
	if b[0] != admitByte {
		return fmt.Errorf("unexpected admission byte %#x from server", b[0])
	}
	return nil
}

// selfFingerprint names our certificate in error messages.
func selfFingerprint(c *tls.Config) string {
	if len(c.Certificates) == 0 || len(c.Certificates[0].Certificate) == 0 {
		return "(none)"
	}
	if leaf := c.Certificates[0].Leaf; leaf != nil {
		return tlsid.Fingerprint(leaf)
	}
	leaf, err := x509.ParseCertificate(c.Certificates[0].Certificate[0])
	if err != nil {
		return "(unparsable)"
	}
	return tlsid.Fingerprint(leaf)
}

// checkTLS refuses configurations that would not authenticate the peer:
// mutual authentication is this package's promise.
func checkTLS(c *tls.Config, server bool) error {
	if c == nil {
		return errors.New("no TLS configuration")
	}
	if len(c.Certificates) == 0 && c.GetCertificate == nil && c.GetClientCertificate == nil {
		return errors.New("TLS configuration presents no certificate")
	}
	custom := c.VerifyConnection != nil || c.VerifyPeerCertificate != nil
	if server {
		switch c.ClientAuth {
		case tls.RequireAndVerifyClientCert:
		case tls.RequireAnyClientCert:
			if !custom {
				return errors.New("TLS configuration requires client certificates but never verifies them")
			}
		default:
			return errors.New("TLS configuration does not require client certificates")
		}
	} else if c.InsecureSkipVerify && !custom {
		return errors.New("TLS configuration skips server verification and has no custom check")
	}
	return nil
}

// Peer is the verified identity of the other side.
func (c *Conn) Peer() tlsid.Peer { return c.peer }

// RemoteAddr is the peer's current UDP address.
func (c *Conn) RemoteAddr() net.Addr { return c.qc.RemoteAddr() }

// LocalAddr is our UDP address.
func (c *Conn) LocalAddr() net.Addr { return c.qc.LocalAddr() }

// OpenStream opens a bidirectional stream. The peer learns of it only when
// data is first written on it.
func (c *Conn) OpenStream(ctx context.Context) (Stream, error) {
	s, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, c.ec.wrap("open stream", err)
	}
	return &stream{s: s, ec: c.ec}, nil
}

// AcceptStream waits for the peer to open a stream and write on it.
func (c *Conn) AcceptStream(ctx context.Context) (Stream, error) {
	s, err := c.qc.AcceptStream(ctx)
	if err != nil {
		return nil, c.ec.wrap("accept stream", err)
	}
	return &stream{s: s, ec: c.ec}, nil
}

// Close closes the connection at once; the peer's pending and future calls
// fail with a *CloseError carrying code and reason. Unsent data is lost:
// close streams and wait for the peer's acknowledgement first if it matters.
func (c *Conn) Close(code uint64, reason string) error {
	if err := c.qc.CloseWithError(quic.ApplicationErrorCode(code), reason); err != nil {
		return c.ec.wrap("close", err)
	}
	return nil
}

// Done is closed when the connection ends, for whatever reason.
func (c *Conn) Done() <-chan struct{} { return c.qc.Context().Done() }

// Err says why the connection ended, translated like stream errors, or nil
// while it is up.
func (c *Conn) Err() error {
	ctx := c.qc.Context()
	if ctx.Err() == nil {
		return nil
	}
	return c.ec.wrap("connection", context.Cause(ctx))
}

type stream struct {
	s  *quic.Stream
	ec errContext
}

func (s *stream) Read(p []byte) (int, error) {
	n, err := s.s.Read(p)
	return n, s.ec.wrap("read", err)
}

func (s *stream) Write(p []byte) (int, error) {
	n, err := s.s.Write(p)
	return n, s.ec.wrap("write", err)
}

func (s *stream) Close() error { return s.ec.wrap("close stream", s.s.Close()) }

func (s *stream) SetReadDeadline(t time.Time) error  { return s.s.SetReadDeadline(t) }
func (s *stream) SetWriteDeadline(t time.Time) error { return s.s.SetWriteDeadline(t) }
