package receiver

import (
	"io"
	"sync"
	"time"
)

// DefaultReleaseAfter is Options.ReleaseAfter when left zero.
const DefaultReleaseAfter = 300 * time.Millisecond

// reacquireWait bounds how long a session whose sender came back waits
// for whoever took the released replica meanwhile (a verify, a drill's
// copy) before it tells the sender the replica is busy.
const reacquireWait = 10 * time.Second

// idleReader is the connection as the session's decoder reads it. While a
// staged epoch is held (hold) and a read has waited longer than after for
// the sender, release runs, in another goroutine while that read still
// blocks: the session lets go of the replica, so that a failover can take
// it from a receiver whose sender died or went silent, instead of waiting
// out the connection's idle timeout. The session takes the replica back
// when the next frame arrives.
//
// release runs only while the session's goroutine is blocked in Read, and
// Read returns only once a running release has finished, so the two never
// touch the replica at once.
type idleReader struct {
	r       io.Reader
	after   time.Duration
	release func()
	t       *time.Timer

	mu      sync.Mutex
	held    bool // a staged epoch holds the replica
	reading bool
}

func newIdleReader(r io.Reader, after time.Duration, release func()) *idleReader {
	ir := &idleReader{r: r, after: after, release: release}
	ir.t = time.AfterFunc(time.Hour, ir.fire)
	ir.t.Stop()
	return ir
}

// hold says whether the session holds a staged epoch that may be released.
func (ir *idleReader) hold(h bool) {
	ir.mu.Lock()
	ir.held = h
	ir.mu.Unlock()
}

func (ir *idleReader) Read(p []byte) (int, error) {
	ir.mu.Lock()
	ir.reading = true
	arm := ir.held
	ir.mu.Unlock()
	if arm {
		ir.t.Reset(ir.after)
	}
	n, err := ir.r.Read(p)
	if arm {
		ir.t.Stop()
	}
	ir.mu.Lock() // waits for a release under way
	ir.reading = false
	ir.mu.Unlock()
	return n, err
}

func (ir *idleReader) fire() {
	ir.mu.Lock()
	defer ir.mu.Unlock()
	// A timer that fired as its read returned finds reading unset.
	if ir.reading && ir.held {
		ir.held = false
		ir.release()
	}
}

// stop ends the timer for good.
func (ir *idleReader) stop() { ir.t.Stop() }
