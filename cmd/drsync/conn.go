package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/stripe"
	"github.com/drsync/drsync/transport"
)

// senderLinger is how long a sender's Close waits, after ending its stream,
// for the receiver to close the connection. The receiver does so as soon as
// it reads the end of the stream, so this normally lasts one round trip and
// lets the receiver see a clean end rather than a lost connection.
const senderLinger = time.Second

// connStream is the byte stream the sender and the receiver libraries use:
// one QUIC stream of a connection. Close may be called from another
// goroutine while a Write blocks (both libraries do so when their context
// ends); quic-go forbids closing a stream during a Write, so in that case the
// whole connection is closed instead, which unblocks the Write.
type connStream struct {
	transport.Stream
	conn *transport.Conn
	// linger > 0 makes Close also close the connection, after waiting up to
	// linger for the peer to do it first. With 0 the connection is left to
	// the caller.
	linger time.Duration

	mu      sync.Mutex
	writing bool
	closed  bool
}

func (c *connStream) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	c.writing = true
	c.mu.Unlock()
	n, err := c.Stream.Write(p)
	c.mu.Lock()
	c.writing = false
	c.mu.Unlock()
	return n, err
}

func (c *connStream) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	writing := c.writing
	c.mu.Unlock()
	// Close means "done with this stream" to the libraries, as it does for
	// a net.Conn: a Read blocked on a peer that went silent must return
	// now, not when the idle timeout fires.
	c.Stream.SetReadDeadline(time.Now())
	if writing {
		return c.conn.Close(0, "closed")
	}
	err := c.Stream.Close()
	if c.linger > 0 {
		t := time.NewTimer(c.linger)
		select {
		case <-c.conn.Done():
		case <-t.C:
		}
		t.Stop()
		c.conn.Close(0, "")
	}
	return err
}

// quicDialer connects to the receiver at addr: a QUIC connection, verified
// both ways by tlsConf, carrying one stream. Closing the stream closes the
// connection. With connections > 1 the stream is striped over that many
// QUIC connections, each with its own congestion control (package stripe).
func quicDialer(addr string, tlsConf *tls.Config, opts transport.Options, connections int) sender.DialFunc {
	one := quicDialOne(addr, tlsConf, opts)
	if connections <= 1 {
		return one
	}
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		c, err := stripe.Dial(ctx, connections, one, stripe.Options{})
		if err != nil {
			return nil, fmt.Errorf("connect to %s over %d connections: %w", addr, connections, err)
		}
		return c, nil
	}
}

func quicDialOne(addr string, tlsConf *tls.Config, opts transport.Options) sender.DialFunc {
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		conn, err := transport.Dial(ctx, addr, tlsConf, opts)
		if err != nil {
			return nil, err
		}
		s, err := conn.OpenStream(ctx)
		if err != nil {
			conn.Close(0, "")
			return nil, fmt.Errorf("open stream to %s: %w", addr, err)
		}
		return &connStream{Stream: s, conn: conn, linger: senderLinger}, nil
	}
}
