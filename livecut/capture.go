package livecut

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/drsync/drsync/migstream"
)

// ramImage is where a cut's migration stream lands: in memory
// (migstream.Flat) or in files of the work directory (migstream.Spool).
type ramImage interface {
	migstream.Handler
	Flush() error
	BlockList() []migstream.Block
	NonZero(i int) *migstream.Bitmap
	ReaderAt(i int) io.ReaderAt
	Close() error
}

// capture receives one migration stream on a unix socket and parses it into
// RAM images while QEMU writes it: the guest's final pass happens while
// it is stopped, so the parser must keep up with QEMU.
type capture struct {
	path string
	ln   net.Listener
	done chan struct{}

	mu    sync.Mutex
	conn  net.Conn
	img   ramImage
	res   *migstream.Result
	err   error
	parse time.Duration

	// held, while open, makes the reader stop reading: QEMU's migration
	// thread blocks in its write, so the migration can neither progress
	// nor complete (and stop the guest) on its own. Closing it lets the
	// stream flow at once, unlike a bandwidth limit, which QEMU applies at
	// its next 100 ms rate-limit window.
	held chan struct{}
}

// hold stops reading the stream until release.
func (c *capture) hold() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == nil {
		c.held = make(chan struct{})
	}
}

// release lets the stream flow again; it may be called when not held.
func (c *capture) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held != nil {
		close(c.held)
		c.held = nil
	}
}

// gatedReader reads the stream while the capture is not held.
type gatedReader struct {
	c    *capture
	conn net.Conn
}

func (r gatedReader) Read(p []byte) (int, error) {
	r.c.mu.Lock()
	held := r.c.held
	r.c.mu.Unlock()
	if held != nil {
		<-held
	}
	return r.conn.Read(p)
}

// startCapture listens on path for a stream whose RAM goes to img, which
// the caller closes.
func startCapture(path string, img ramImage) (*capture, error) {
	os.Remove(path) // a socket left by a killed predecessor
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen for the migration stream: %w", err)
	}
	c := &capture{path: path, ln: ln, done: make(chan struct{}), img: img}
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
	res, err := migstream.Parse(gatedReader{c, conn}, c.img, migstream.Options{})
	conn.Close()
	if err == nil {
		err = c.img.Flush()
	}
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
	c.release()
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

// startCapture opens the socket the cut's migration stream comes to. A
// tracked VM's full cut (the one that starts its chain) spools its RAM to
// files in the work directory: held in memory, it would grow this process
// by the guest's non-zero RAM, where the kernel can write the files' pages
// out and reclaim them. A tracked cut's stream holds only the small RAM
// blocks outside the shared backend (video memory, ROMs), and a VM that
// always cuts full keeps its image in memory, as it pays for all of its RAM
// every epoch (spooled, it would also write it to disk every epoch).
func (c *cut) startCapture() (*capture, error) {
	s := c.s
	var img ramImage = migstream.NewFlat()
	if !c.tracked && s.o.TrackRAM != nil {
		img = migstream.NewSpool(s.o.FS, s.o.WorkDir, fmt.Sprintf("ram-%d", c.gen))
	}
	cap, err := startCapture(filepath.Join(s.o.WorkDir, "mig.sock"), img)
	if err != nil {
		img.Close()
		return nil, err
	}
	c.cap = cap
	return cap, nil
}

// fullCutSlot lets one full cut of a tracked VM at a time hold its
// spooled RAM. A full cut holds the guest's whole RAM (its non-zero pages)
// in the work directory and the page cache from the migration until its
// epoch is sent; the first cuts of several tracked VMs started together
// would add up to the sum of their RAM, where one at a time bounds the
// spool by the largest guest. Tracked VMs cut full only to start their
// chain, so the wait delays first epochs, never the steady state. VMs
// that always cut full (no tracking) are not limited: every one of their
// epochs would wait.
var fullCutSlot = make(chan struct{}, 1)

// acquireFullCut waits for the full-cut slot, or for ctx.
func acquireFullCut(ctx context.Context) error {
	select {
	case fullCutSlot <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func releaseFullCut() { <-fullCutSlot }
