package livecut

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/drsync/drsync/migstream"
)

// capture receives one migration stream on a unix socket and parses it into
// flat RAM images while QEMU writes it: the guest's final pass happens while
// it is stopped, so the parser must keep up with QEMU.
type capture struct {
	path string
	ln   net.Listener
	done chan struct{}

	mu    sync.Mutex
	conn  net.Conn
	flat  *migstream.Flat
	res   *migstream.Result
	err   error
	parse time.Duration
}

func startCapture(path string) (*capture, error) {
	os.Remove(path) // a socket left by a killed predecessor
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen for the migration stream: %w", err)
	}
	c := &capture{path: path, ln: ln, done: make(chan struct{}), flat: migstream.NewFlat()}
	go c.run()
	return c, nil
}

func (c *capture) run() {
	defer close(c.done)
	conn, err := c.ln.Accept()
	c.ln.Close()
	if err != nil {
		c.finish(nil, fmt.Errorf("no migration stream arrived: %w", err), 0)
		return
	}
	c.mu.Lock()
	c.conn = conn
	c.mu.Unlock()
	start := time.Now()
	res, err := migstream.Parse(conn, c.flat, migstream.Options{})
	conn.Close()
	if err != nil {
		err = fmt.Errorf("parse the migration stream: %w", err)
	}
	c.finish(res, err, time.Since(start))
}

func (c *capture) finish(res *migstream.Result, err error, d time.Duration) {
	c.mu.Lock()
	c.res, c.err, c.parse = res, err, d
	c.mu.Unlock()
}

// abort stops the capture: no connection yet, or a stream that will never
// complete (the migration failed).
func (c *capture) abort() {
	c.ln.Close()
	c.mu.Lock()
	if c.conn != nil {
		c.conn.Close()
	}
	c.mu.Unlock()
	<-c.done
	os.Remove(c.path)
}

// wait returns the parsed stream once QEMU has closed it.
func (c *capture) wait(ctx context.Context) (*migstream.Result, error) {
	select {
	case <-c.done:
	case <-ctx.Done():
		c.abort()
		return nil, fmt.Errorf("migration stream: %w", ctx.Err())
	}
	os.Remove(c.path)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && c.res == nil {
		return nil, errors.New("migration stream: ended without a result")
	}
	return c.res, c.err
}
