package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// maxPending bounds connections admitted but not yet taken by Accept;
// beyond it quic-go's own queue fills and refuses new connections.
const maxPending = 16

// Listener accepts mutually authenticated connections.
type Listener struct {
	ql    *quic.Listener
	tr    *quic.Transport // set when the listener owns its socket (ResetKey)
	pc    net.PacketConn
	opts  Options
	conns chan *Conn
	slots chan struct{} // one token per pending connection
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

// Listen listens on UDP address addr. tlsConf must present a certificate,
// require one from clients and verify it (see tlsid.ServerTLS).
func Listen(addr string, tlsConf *tls.Config, opts Options) (*Listener, error) {
	return listen(addr, tlsConf, opts, nil)
}

// listen takes an optional packet conn so tests can interfere with packets.
func listen(addr string, tlsConf *tls.Config, opts Options, pc net.PacketConn) (*Listener, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	if err := checkTLS(tlsConf, true); err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	conf := serverConfig(tlsConf, opts)
	var ql *quic.Listener
	var tr *quic.Transport
	var err error
	switch {
	case opts.ResetKey != nil:
		if pc == nil {
			ua, rerr := net.ResolveUDPAddr("udp", addr)
			if rerr != nil {
				return nil, fmt.Errorf("listen %s: %w", addr, rerr)
			}
			if pc, err = net.ListenUDP("udp", ua); err != nil {
				return nil, fmt.Errorf("listen %s: %w", addr, err)
			}
		}
		key := quic.StatelessResetKey(*opts.ResetKey)
		tr = &quic.Transport{Conn: pc, StatelessResetKey: &key}
		if ql, err = tr.Listen(conf, opts.quicConfig(true)); err != nil {
			tr.Close()
		}
	case pc == nil:
		ql, err = quic.ListenAddr(addr, conf, opts.quicConfig(true))
	default:
		ql, err = quic.Listen(pc, conf, opts.quicConfig(true))
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	l := &Listener{
		tr:    tr,
		pc:    pc,
		ql:    ql,
		opts:  opts,
		conns: make(chan *Conn),
		slots: make(chan struct{}, maxPending),
		done:  make(chan struct{}),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// serverConfig clones tlsConf and, when OnReject is set, reports refused
// client certificates along with the client's address, which only the
// per-connection config callback gets to see.
func serverConfig(tlsConf *tls.Config, opts Options) *tls.Config {
	conf := tlsConf.Clone()
	if opts.OnReject == nil {
		return conf
	}
	inner := conf.GetConfigForClient
	base := conf.Clone()
	base.GetConfigForClient = nil
	conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c := base
		if inner != nil {
			ic, err := inner(hello)
			if err != nil {
				return nil, err
			}
			if ic != nil {
				c = ic
			}
		}
		c = c.Clone()
		var remote net.Addr
		if hello.Conn != nil {
			remote = hello.Conn.RemoteAddr()
		}
		report := func(err error) error {
			if err != nil {
				opts.OnReject(remote, fmt.Errorf("%w: client %v: its certificate was not trusted: %w", ErrUntrustedPeer, remote, err))
			}
			return err
		}
		if vc := c.VerifyConnection; vc != nil {
			c.VerifyConnection = func(cs tls.ConnectionState) error { return report(vc(cs)) }
		}
		if vp := c.VerifyPeerCertificate; vp != nil {
			c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error { return report(vp(raw, chains)) }
		}
		return c, nil
	}
	return conf
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return
		}
		qc, err := l.ql.Accept(context.Background())
		if err != nil {
			// Only Close ends quic-go's Accept with a background context.
			<-l.slots
			return
		}
		l.wg.Add(1)
		go l.admit(qc)
	}
}

// admit confirms the connection to the client, then hands it to Accept.
func (l *Listener) admit(qc *quic.Conn) {
	defer l.wg.Done()
	defer func() { <-l.slots }()
	c, err := newConn(qc, true, l.opts)
	if err == nil {
		err = sendAdmission(qc, l.opts)
	}
	if err != nil {
		qc.CloseWithError(0, "")
		return
	}
	select {
	case l.conns <- c:
	case <-l.done:
		qc.CloseWithError(0, "listener closed")
	}
}

func sendAdmission(qc *quic.Conn, o Options) error {
	s, err := qc.OpenUniStream()
	if err != nil {
		return err
	}
	s.SetWriteDeadline(time.Now().Add(o.HandshakeTimeout))
	if _, err := s.Write([]byte{admitByte}); err != nil {
		return err
	}
	return s.Close()
}

// Accept returns the next admitted connection.
func (l *Listener) Accept(ctx context.Context) (*Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, fmt.Errorf("accept: %w", ErrListenerClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("accept: %w", ctx.Err())
	}
}

// Addr is the local UDP address.
func (l *Listener) Addr() net.Addr { return l.ql.Addr() }

// Close stops accepting and refuses connections not yet returned by Accept.
// Connections already accepted stay up.
func (l *Listener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.ql.Close()
		l.wg.Wait()
		if l.tr != nil {
			// The socket goes with the listener here, and with it the
			// accepted connections.
			l.tr.Close()
			l.pc.Close()
		}
	})
	return nil
}
