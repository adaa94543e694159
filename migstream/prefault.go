package migstream

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// A packed arena fills from its start as pages arrive, and every new huge
// page it reaches is a fault in which the kernel zeroes 2 MiB. For a
// stream of hundreds of MiB that zeroing is a large part of the parse,
// which the guest may be waiting on (a cut's last pass stops it). A
// prefaulter does it on another thread, a little ahead of the parser:
// MADV_POPULATE_WRITE maps the next pages as the parser's writes would,
// without touching what it already wrote.
//
// It starts only once a block has taken prefaultFrom bytes, so small
// blocks and a tracked cut's few pages never map more than they use; past
// that it stays a quarter of what is used ahead (between prefaultMin and
// prefaultMax), which is what the arena may hold unused when the stream
// ends.
const (
	prefaultFrom = 8 << 20
	prefaultMin  = 4 << 20
	prefaultMax  = 64 << 20
)

type prefaulter struct {
	base []byte
	want atomic.Int64 // map base up to here
	stop atomic.Bool
	kick chan struct{}
	wg   sync.WaitGroup
}

func startPrefault(base []byte) *prefaulter {
	p := &prefaulter{base: base, kick: make(chan struct{}, 1)}
	p.wg.Add(1)
	go p.run()
	return p
}

// ask moves the goal to used bytes plus the distance ahead; it never
// blocks the parser.
func (p *prefaulter) ask(used int64) {
	ahead := min(max(used/4, prefaultMin), prefaultMax)
	p.want.Store(min(used+ahead, int64(len(p.base))))
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *prefaulter) run() {
	defer p.wg.Done()
	var done int64
	for range p.kick {
		for goal := p.want.Load(); done < goal && !p.stop.Load(); {
			n := min(goal-done, hugePage)
			if unix.Madvise(p.base[done:done+n], unix.MADV_POPULATE_WRITE) != nil {
				// A kernel without it (before 5.14): the parser's own
				// faults map the pages, as they would without this.
				return
			}
			done += n
		}
	}
}

// close stops the prefaulter and waits for it, so that the arena can be
// unmapped.
func (p *prefaulter) close() {
	p.stop.Store(true)
	close(p.kick)
	p.wg.Wait()
}
