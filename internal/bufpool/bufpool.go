// Package bufpool keeps buffers of one size for reuse across
// goroutines. Unlike a sync.Pool, it keeps at most a fixed number while
// they are not in use, so what a process holds between uses is bounded
// and the same from run to run; buffers beyond that are left to the
// garbage collector. It knows nothing of what the buffers carry.
package bufpool

// Pool holds up to Keep idle buffers of capacity Size.
type Pool struct {
	size int
	idle chan []byte
}

// New returns a pool of buffers of capacity size keeping at most keep
// idle ones.
func New(size, keep int) *Pool {
	return &Pool{size: size, idle: make(chan []byte, keep)}
}

// Size is the capacity of the pool's buffers.
func (p *Pool) Size() int { return p.size }

// Get returns a buffer of length n, not zeroed: an idle one if n fits the
// pool's size and one is idle, else a new one.
func (p *Pool) Get(n int) []byte {
	if n > p.size {
		return make([]byte, n)
	}
	select {
	case b := <-p.idle:
		return b[:n]
	default:
		return make([]byte, n, p.size)
	}
}

// Put hands b back once its user is done with it; a buffer of another
// capacity, or one beyond what the pool keeps, is dropped.
func (p *Pool) Put(b []byte) {
	if cap(b) != p.size {
		return
	}
	select {
	case p.idle <- b[:0]:
	default:
	}
}
