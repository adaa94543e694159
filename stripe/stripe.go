package stripe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drsync/drsync/internal/bufpool"
)

// Limits and defaults.
const (
	HeaderSize         = 12      // of a chunk
	MaxChunk           = 1 << 20 // bytes of data in one chunk
	MaxCount           = 64      // connections in one stream
	DefaultChunkSize   = 64 << 10
	DefaultMaxBuffered = 16 << 20
	DefaultCloseWait   = 5 * time.Second
)

// chunkBufs holds the buffers of chunks of up to DefaultChunkSize, in
// both directions, for every stream of the process: each chunk used to be
// a new allocation, which made the stream most of what a sender allocated
// and the collector's pace. 32 idle are 2 MiB.
var chunkBufs = bufpool.New(HeaderSize+DefaultChunkSize, 32)

// ErrMalformed marks a hello or chunk that breaks the format.
var ErrMalformed = errors.New("stripe: malformed")

// Options configure a Conn. Zero values take the defaults.
type Options struct {
	// ChunkSize is the most data one chunk carries (at most MaxChunk).
	ChunkSize int
	// MaxBuffered bounds the bytes that arrived ahead of their turn.
	MaxBuffered int
	// CloseWait is how long Close waits for written data to be handed to
	// the connections before it closes them.
	CloseWait time.Duration
	// Grow, if set, hands chunks to only some of the connections, starting
	// with Grow.Start, and adds more while that raises goodput (Grower);
	// its Max is the number of connections. nil: all carry data.
	Grow *GrowConfig
	// OnGrow, if set, learns of each window the Grower closes, and so of
	// each change of the connections carrying data. It is called from a
	// Write, which it must not hold up.
	OnGrow func(Step)
	// Now is the clock of the Grower's samples (default time.Now).
	Now func() time.Time
	// ClosedByPeer, if set, says whether a read error means the peer
	// closed that connection on purpose, as io.EOF does: the chunks still
	// on their way on the others (a refusal, say) are read before the
	// stream ends, and a gap left by it is still an error.
	ClosedByPeer func(error) bool
}

// Validate fills the defaults and reports what is wrong.
func (o *Options) Validate() error {
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.MaxBuffered == 0 {
		o.MaxBuffered = DefaultMaxBuffered
	}
	if o.CloseWait == 0 {
		o.CloseWait = DefaultCloseWait
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	switch {
	case o.ChunkSize < 1 || o.ChunkSize > MaxChunk:
		return fmt.Errorf("stripe: chunk size %d outside [1, %d]", o.ChunkSize, MaxChunk)
	case o.MaxBuffered < 0 || o.CloseWait < 0:
		return errors.New("stripe: negative limit")
	}
	return nil
}

// Conn is one byte stream striped over several connections. Read and
// Write may be used from different goroutines; Close may be called at any
// time and ends a blocked Read or Write.
type Conn struct {
	subs []io.ReadWriteCloser
	o    Options

	wmu     sync.Mutex // serialises Write: chunks get their seq in order
	wseq    uint64
	wclosed bool          // the end chunk is queued: no more writes
	queue   chan []byte   // header + data, for the writer goroutines
	quit    chan struct{} // closed when the stream fails or is closed
	wg      sync.WaitGroup

	// Only the writers of the first active connections take chunks; the
	// others wait for activeCh, closed and replaced when active changes.
	active   atomic.Int32
	activeMu sync.Mutex
	activeCh chan struct{}
	grower   *Grower       // nil: all connections carry data
	sent     atomic.Int64  // data bytes the connections took
	waiting  time.Duration // chunks waited for a writer; c.wmu

	mu       sync.Mutex
	cond     *sync.Cond
	pending  map[uint64][]byte
	next     uint64 // seq of the next chunk Read returns
	buffered int
	cur      []byte        // the rest of the chunk being read
	curBuf   []byte        // the whole of that chunk, back to chunkBufs once read
	ended    bool          // the end chunk arrived, at endSeq
	endedCh  chan struct{} // closed when ended is set
	endSeq   uint64
	eofs     int   // connections the peer closed
	err      error // why the stream failed
	closed   bool

	closeOnce, quitOnce, subsOnce sync.Once
}

// New joins subs, whose hellos have been exchanged, into one stream. The
// peer must join the same connections in the same way.
func New(subs []io.ReadWriteCloser, o Options) (*Conn, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if len(subs) == 0 || len(subs) > MaxCount {
		return nil, fmt.Errorf("stripe: %d connections, want 1 to %d", len(subs), MaxCount)
	}
	c := &Conn{subs: subs, o: o, queue: make(chan []byte, 2*len(subs)), quit: make(chan struct{}), pending: map[uint64][]byte{},
		activeCh: make(chan struct{}), endedCh: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	c.active.Store(int32(len(subs)))
	if o.Grow != nil {
		gc := *o.Grow
		gc.Max = len(subs)
		g, err := NewGrower(gc)
		if err != nil {
			return nil, err
		}
		c.grower = g
		c.active.Store(int32(g.Active()))
	}
	for i, s := range subs {
		c.wg.Add(1)
		go c.writeLoop(i, s)
		go c.readLoop(i, s)
	}
	return c, nil
}

// fail ends the stream with err (the first cause wins) and closes every
// connection, which unblocks the goroutines.
func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	c.quitOnce.Do(func() { close(c.quit) })
	c.closeSubs()
}

func (c *Conn) closeSubs() {
	c.subsOnce.Do(func() {
		var wg sync.WaitGroup
		for _, s := range c.subs {
			wg.Add(1)
			go func() { defer wg.Done(); s.Close() }()
		}
		wg.Wait()
	})
}

func (c *Conn) writeLoop(i int, s io.Writer) {
	defer c.wg.Done()
	for {
		if i >= int(c.active.Load()) {
			c.activeMu.Lock()
			ch, idle := c.activeCh, i >= int(c.active.Load())
			c.activeMu.Unlock()
			if idle {
				select {
				case <-ch:
					continue
				case <-c.quit:
					return
				}
			}
		}
		select {
		case b, ok := <-c.queue:
			if !ok {
				return
			}
			_, err := s.Write(b)
			n := len(b) - HeaderSize
			chunkBufs.Put(b) // a Writer keeps no reference to what it was given
			if err != nil {
				c.fail(fmt.Errorf("stripe: connection %d: write: %w", i, err))
				return
			}
			c.sent.Add(int64(n))
		case <-c.quit:
			return
		}
	}
}

// setActive makes the first n connections carry data.
func (c *Conn) setActive(n int) {
	c.activeMu.Lock()
	defer c.activeMu.Unlock()
	if int(c.active.Load()) == n {
		return
	}
	c.active.Store(int32(n))
	close(c.activeCh)
	c.activeCh = make(chan struct{})
}

// Active is the number of connections that carry data.
func (c *Conn) Active() int { return int(c.active.Load()) }

// observe feeds the Grower a sample; c.wmu is held.
func (c *Conn) observe() {
	if c.grower == nil {
		return
	}
	st := c.grower.Observe(Sample{At: c.o.Now(), Bytes: c.sent.Load(), Waiting: c.waiting})
	if st.Changed {
		c.setActive(st.Active)
	}
	if st.Window && c.o.OnGrow != nil {
		c.o.OnGrow(st)
	}
}

func (c *Conn) readLoop(i int, s io.Reader) {
	var h [HeaderSize]byte
	for {
		if _, err := io.ReadFull(s, h[:]); err != nil {
			if err == io.EOF || c.o.ClosedByPeer != nil && c.o.ClosedByPeer(err) {
				// The peer closed this connection after its last chunk.
				// Its end chunk may still be on its way on another one.
				if err := c.subEnded(); err != nil {
					c.fail(fmt.Errorf("stripe: connection %d: %w", i, err))
				}
				return
			}
			c.mu.Lock()
			closed := c.closed
			c.mu.Unlock()
			if !closed {
				c.fail(fmt.Errorf("stripe: connection %d: %w", i, err))
			}
			return
		}
		seq, n := binary.BigEndian.Uint64(h[:8]), binary.BigEndian.Uint32(h[8:])
		if n > MaxChunk {
			c.fail(fmt.Errorf("stripe: connection %d: chunk %d of %d bytes: %w", i, seq, n, ErrMalformed))
			return
		}
		data := chunkBufs.Get(int(n))
		if _, err := io.ReadFull(s, data); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			c.fail(fmt.Errorf("stripe: connection %d: chunk %d: %w", i, seq, err))
			return
		}
		ok, err := c.deliver(seq, data)
		if err != nil {
			c.fail(fmt.Errorf("stripe: connection %d: %w", i, err))
		}
		if !ok {
			return
		}
	}
}

// subEnded counts a connection the peer closed. Once all are closed, every
// chunk up to the end must have arrived.
func (c *Conn) subEnded() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.eofs++
	if c.eofs < len(c.subs) || c.closed || c.err != nil {
		return nil
	}
	if !c.ended {
		return fmt.Errorf("every connection ended before the stream did: %w", io.ErrUnexpectedEOF)
	}
	if missing := c.endSeq - c.next - uint64(len(c.pending)); missing > 0 {
		return fmt.Errorf("every connection ended with %d chunks missing: %w", missing, io.ErrUnexpectedEOF)
	}
	return nil
}

// deliver files a chunk for Read, waiting while too much arrived early.
// It reports whether to go on reading, and what is wrong with the chunk.
func (c *Conn) deliver(seq uint64, data []byte) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for seq != c.next && c.buffered+len(data) > c.o.MaxBuffered && c.err == nil && !c.closed {
		c.cond.Wait()
	}
	if c.err != nil || c.closed {
		return false, nil
	}
	if _, dup := c.pending[seq]; dup || seq < c.next || c.ended && seq >= c.endSeq {
		return false, fmt.Errorf("chunk %d again or after the end: %w", seq, ErrMalformed)
	}
	if len(data) == 0 {
		for s := range c.pending {
			if s > seq {
				return false, fmt.Errorf("end at chunk %d before chunk %d: %w", seq, s, ErrMalformed)
			}
		}
		if !c.ended {
			close(c.endedCh)
		}
		c.ended, c.endSeq = true, seq
	} else {
		c.pending[seq] = data
		c.buffered += len(data)
	}
	c.cond.Broadcast()
	return true, nil
}

// Done is closed once the stream has failed or been closed.
func (c *Conn) Done() <-chan struct{} { return c.quit }

// PeerEnded is closed once the peer's end of the stream has arrived: it
// has written all it will, which a peer does once it has read what it
// waited for. Until then, closing the connections (not just the stream)
// could discard what is still in flight to it.
func (c *Conn) PeerEnded() <-chan struct{} { return c.endedCh }

// Read reads the stream in order.
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if len(c.cur) > 0 {
			n := copy(p, c.cur)
			if c.cur = c.cur[n:]; len(c.cur) == 0 {
				chunkBufs.Put(c.curBuf)
				c.curBuf = nil
			}
			return n, nil
		}
		if b, ok := c.pending[c.next]; ok {
			delete(c.pending, c.next)
			c.buffered -= len(b)
			c.next++
			c.cur, c.curBuf = b, b
			c.cond.Broadcast()
			continue
		}
		switch {
		case c.ended && c.next == c.endSeq:
			return 0, io.EOF
		case c.closed:
			return 0, net.ErrClosed
		case c.err != nil:
			return 0, c.err
		}
		c.cond.Wait()
	}
}

// Write hands p to the connections in chunks. It returns once they are
// queued; a failure of any connection is returned by the next call.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(p) == 0 {
		return 0, c.writeErr()
	}
	var done int
	for len(p) > 0 {
		n := min(len(p), c.o.ChunkSize)
		if err := c.enqueue(p[:n]); err != nil {
			return done, err
		}
		done += n
		p = p[n:]
	}
	return done, nil
}

func (c *Conn) writeErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return net.ErrClosed
	case c.err != nil:
		return c.err
	}
	return nil
}

// enqueue queues one chunk (an empty one ends the stream); c.wmu is held.
func (c *Conn) enqueue(data []byte) error {
	if c.wclosed {
		return net.ErrClosed
	}
	if err := c.writeErr(); err != nil {
		return err
	}
	b := chunkBufs.Get(HeaderSize + len(data))
	binary.BigEndian.PutUint64(b, c.wseq)
	binary.BigEndian.PutUint32(b[8:], uint32(len(data)))
	copy(b[HeaderSize:], data)
	select {
	case c.queue <- b:
		c.wseq++
		c.observe()
		return nil
	default:
	}
	// Every writer is busy: the chunk waits for a connection, which the
	// Grower counts as the connections, not the caller, setting the pace.
	start := c.o.Now()
	select {
	case c.queue <- b:
		c.waiting += c.o.Now().Sub(start)
		c.wseq++
		c.observe()
		return nil
	case <-c.quit:
		if err := c.writeErr(); err != nil {
			return err
		}
		return net.ErrClosed
	}
}

// Close ends the stream. Unless a Write is blocked, the end of the stream
// is sent after what was written, and Close waits up to CloseWait for it
// to be handed to the connections; then it closes them.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		if c.wmu.TryLock() {
			if c.enqueue(nil) == nil {
				// Every writer drains the queue, then stops.
				c.setActive(len(c.subs))
				c.wclosed = true
				close(c.queue) // the writers finish the queue, then stop
				drained := make(chan struct{})
				go func() { c.wg.Wait(); close(drained) }()
				t := time.NewTimer(c.o.CloseWait)
				select {
				case <-drained:
				case <-t.C:
				}
				t.Stop()
			}
			c.wmu.Unlock()
		}
		c.mu.Lock()
		c.closed = true
		c.cond.Broadcast()
		c.mu.Unlock()
		c.quitOnce.Do(func() { close(c.quit) })
		c.closeSubs()
	})
	return nil
}
