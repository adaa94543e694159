// Package bufpool keeps buffers for reuse across goroutines. Unlike a
// sync.Pool, it keeps at most a fixed number while they are not in use, so
// what a process holds between uses is bounded and the same from run to
// run; buffers beyond that are left to the garbage collector. It knows
// nothing of what the buffers carry.
//
// A pool's buffers come in a few size classes, each a quarter of the one
// above, down to MinClass: a small request gets a buffer of the smallest
// class that holds it, never one of the largest. With one class, every
// concurrent user of a 4 MiB pool held 4 MiB whatever it asked for, so a
// sender of many VMs whose epochs met held 4 MiB per VM for frames of a
// few pages.
package bufpool

// MinClass is the smallest class a pool makes below its largest: smaller
// buffers cost little to allocate and would hardly be worth keeping.
const MinClass = 64 << 10

// maxClasses bounds the classes of one pool (4 MiB down to 64 KiB).
const maxClasses = 4

// Pool holds up to keep idle buffers of each of its classes.
type Pool struct {
	classes []class // smallest first; the last is the pool's Size
}

type class struct {
	size int
	idle chan []byte
}

// New returns a pool whose largest buffers have capacity size, keeping at
// most keep idle ones per class. Idle buffers thus hold at most
// keep·size·4/3 bytes.
func New(size, keep int) *Pool {
	var cs []class
	for s := size; ; s /= 4 {
		cs = append([]class{{size: s, idle: make(chan []byte, keep)}}, cs...)
		if s/4 < MinClass || len(cs) == maxClasses {
			break
		}
	}
	return &Pool{classes: cs}
}

// Size is the capacity of the pool's largest buffers.
func (p *Pool) Size() int { return p.classes[len(p.classes)-1].size }

// Get returns a buffer of length n, not zeroed, whose capacity is that of
// the smallest class holding n: an idle one of that class if there is one,
// else a new one. Beyond Size it is a new buffer of exactly n.
func (p *Pool) Get(n int) []byte {
	for i := range p.classes {
		c := &p.classes[i]
		if n > c.size {
			continue
		}
		select {
		case b := <-c.idle:
			return b[:n]
		default:
			return make([]byte, n, c.size)
		}
	}
	return make([]byte, n)
}

// Put hands b back once its user is done with it; a buffer whose capacity
// is no class's, or one beyond what the pool keeps, is dropped.
func (p *Pool) Put(b []byte) {
	for i := range p.classes {
		c := &p.classes[i]
		if cap(b) != c.size {
			continue
		}
		select {
		case c.idle <- b[:0]:
		default:
		}
		return
	}
}
