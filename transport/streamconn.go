package transport

import (
	"net"
	"sync"
	"time"
)

// StreamConn is the byte stream the sender and the receiver libraries use:
// one stream of a connection, closed the way they expect. Close may be
// called from another goroutine while a Write blocks (both libraries do so
// when their context ends); quic-go forbids closing a stream during a
// Write, so in that case the whole connection is closed instead, which
// unblocks the Write.
type StreamConn struct {
	Stream
	conn *Conn
	// linger > 0 makes Close also close the connection, after waiting up to
	// linger for the peer to do it first. With 0 the connection is left to
	// the caller.
	linger time.Duration

	mu      sync.Mutex
	writing bool
	closed  bool
}

// NewStreamConn wraps stream s of conn; see StreamConn for linger.
func NewStreamConn(s Stream, conn *Conn, linger time.Duration) *StreamConn {
	return &StreamConn{Stream: s, conn: conn, linger: linger}
}

func (c *StreamConn) Write(p []byte) (int, error) {
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

func (c *StreamConn) Close() error {
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
