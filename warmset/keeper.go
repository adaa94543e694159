package warmset

import (
	"log/slog"
	"strings"
	"sync"
)

// BlockEpoch is one RAM block of a committed epoch: its replica file and
// the pages the epoch wrote.
type BlockEpoch struct {
	Name    string
	File    string
	Size    int64
	Written []Run
}

// Keeper tracks the hot pages of every replicated VM's RAM blocks and keeps
// them pinned. Commit is cheap and never waits for storage: pinning (which
// may read pages in) happens on a goroutine of its own, so the receiver's
// acknowledgement of an epoch is not delayed.
type Keeper struct {
	o   Options
	log *slog.Logger

	mu     sync.Mutex
	blocks map[string]*block // by vm/name
	work   chan pinJob
	done   chan struct{}
	queued sync.WaitGroup
}

type block struct {
	tr   *Tracker // under Keeper.mu
	file string
	size int64

	pinMu sync.Mutex // the pinner's; Pinned reads under it
	pin   *Pin
}

type pinJob struct {
	b    *block
	runs []Run
}

// NewKeeper starts a keeper; o applies to every block.
func NewKeeper(o Options, log *slog.Logger) *Keeper {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &Keeper{o: o, log: log, blocks: map[string]*block{}, work: make(chan pinJob, 64), done: make(chan struct{})}
	go k.pinLoop()
	return k
}

// Commit feeds vm's committed epoch and returns the size of its hot set.
func (k *Keeper) Commit(vm string, blocks []BlockEpoch) int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	var hot int64
	for _, be := range blocks {
		key := vm + "/" + be.Name
		b := k.blocks[key]
		if b == nil || b.size != be.Size || b.file != be.File {
			tr, err := New(be.Size, k.o)
			if err != nil {
				k.log.Warn("warm pages: cannot track block", "vm", vm, "block", be.Name, "err", err)
				continue
			}
			b = &block{tr: tr, file: be.File, size: be.Size}
			k.blocks[key] = b
		}
		for _, r := range be.Written {
			b.tr.Written(r.First, r.Count)
		}
		b.tr.EndEpoch()
		runs := b.tr.Hot()
		hot += HotBytes(runs)
		k.queued.Add(1)
		select {
		case k.work <- pinJob{b: b, runs: runs}:
		default:
			// The pinner is behind; the next epoch brings a newer set.
			k.queued.Done()
		}
	}
	return hot
}

// Pinned is how many bytes are pinned for vm right now.
func (k *Keeper) Pinned(vm string) int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	var n int64
	for key, b := range k.blocks {
		if strings.HasPrefix(key, vm+"/") {
			b.pinMu.Lock()
			if b.pin != nil {
				n += b.pin.Locked()
			}
			b.pinMu.Unlock()
		}
	}
	return n
}

func (k *Keeper) pinLoop() {
	defer close(k.done)
	for j := range k.work {
		k.pin(j)
		k.queued.Done()
	}
}

func (k *Keeper) pin(j pinJob) {
	b := j.b
	b.pinMu.Lock()
	defer b.pinMu.Unlock()
	if b.pin == nil {
		p, err := OpenPin(b.file, b.size)
		if err != nil {
			k.log.Warn("warm pages: cannot map RAM image", "file", b.file, "err", err)
			return
		}
		b.pin = p
	}
	if err := b.pin.Set(j.runs); err != nil {
		k.log.Warn("warm pages: cannot pin all hot pages", "file", b.file, "err", err)
	}
}

// Flush waits until every epoch committed so far is pinned.
func (k *Keeper) Flush() { k.queued.Wait() }

// Close unpins everything.
func (k *Keeper) Close() error {
	close(k.work)
	<-k.done
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, b := range k.blocks {
		b.pinMu.Lock()
		if b.pin != nil {
			b.pin.Close()
			b.pin = nil
		}
		b.pinMu.Unlock()
	}
	return nil
}
