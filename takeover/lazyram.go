package takeover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/replica"
)

// RAM loading: how the main RAM block got into the takeover's QEMU.
const (
	RAMMapped = "mapped" // the replica's local file, mapped privately
	RAMCopied = "copied" // read whole from the store into a local file first
	RAMLazy   = "lazy"   // faulted in from the store while the guest runs
	RAMStream = "stream" // every page in the state stream (FullStream)
)

// A lazy load fills the guest's RAM in runs: what a fault brings in at
// once (64 pages: a store read costs milliseconds whatever its size, and
// a guest touching a page touches its neighbours), and what the
// background fill reads at once (an RBD object).
const (
	lazyRun      = 256 << 10
	lazyFillSpan = 4 << 20
	// lazyFaultReaders serve faults at once (vCPUs fault independently);
	// the fill runs ramCopyReaders readers.
	lazyFaultReaders = 4
	lazyReadTries    = 3
	lazySlowRead     = 5 * time.Second
)

// lazyRAMAvailable says whether this process can load RAM lazily: a
// kernel serving missing-page faults of shared memory, and the
// privileges to inject the registration into QEMU (root).
func lazyRAMAvailable() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not root: no ptrace of QEMU: %w", dirtylog.ErrUnsupported)
	}
	return dirtylog.MissingSupported()
}

// hotRAM is a replica image that knows which runs of a RAM image the
// guest wrote in its recent epochs (replica/rbdstore records them at
// commit): offsets of runs of size run, hottest first.
type hotRAM interface {
	HotRAM(t *replica.TargetEntry, run int64) ([]int64, error)
}

// lazySource is what a plan loads lazily: the main RAM image in the
// store and its hot runs.
type lazySource struct {
	open func() (replica.ReaderAtCloser, error)
	size int64
	hot  []int64
}

// uffd is the missing-page registration the loader serves
// (dirtylog.Missing).
type uffd interface {
	Faults(offs []uint64) (int, error)
	Copy(off uint64, data []byte) (int, error)
	Zero(off, n uint64) (int, error)
	Unregister() error
	Close() error
}

// lazyLoader serves the guest's missing-page faults from the store and
// fills every other page in the background, hot runs first, then the
// rest in order. Every run is put in once: a run's state goes from
// missing to in, and a copy over pages already in (a fault and the fill
// racing for a run) leaves them as they are, so the guest's writes are
// never undone.
type lazyLoader struct {
	u    uffd
	src  lazySource
	log  *slog.Logger
	runs []atomic.Uint32 // runMissing, runClaimed (by the fill), runIn
	left atomic.Int64    // runs not in

	faulted, filled, zeroed atomic.Int64 // runs, by how they came in
	hotDone                 atomic.Int64

	start    time.Time
	resident chan struct{} // closed when every run is in
	stopped  chan struct{} // closed by stop
	stopOnce sync.Once
	wg       sync.WaitGroup
	mu       sync.Mutex
	err      error
	took     time.Duration
	faultsMu sync.Mutex
	inFault  map[int]bool
}

const (
	runMissing uint32 = iota
	runClaimed
	runIn
)

func newLazyLoader(u uffd, src lazySource, log *slog.Logger) *lazyLoader {
	n := int((src.size + lazyRun - 1) / lazyRun)
	l := &lazyLoader{u: u, src: src, log: log, runs: make([]atomic.Uint32, n),
		resident: make(chan struct{}), stopped: make(chan struct{}), inFault: map[int]bool{}}
	l.left.Store(int64(n))
	return l
}

// run starts serving faults and the background fill.
func (l *lazyLoader) run() error {
	l.start = time.Now()
	faults := make(chan int, 1024)
	var readers []replica.ReaderAtCloser
	for range lazyFaultReaders + ramCopyReaders {
		r, err := l.src.open()
		if err != nil {
			for _, r := range readers {
				r.Close()
			}
			return fmt.Errorf("open the RAM image: %w", err)
		}
		readers = append(readers, r)
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer close(faults)
		offs := make([]uint64, 64)
		for {
			n, err := l.u.Faults(offs)
			if err != nil {
				if !errors.Is(err, io.EOF) {
					l.fail(fmt.Errorf("read faults: %w", err))
				}
				return
			}
			for _, off := range offs[:n] {
				faults <- int(off / lazyRun)
			}
		}
	}()
	for i := range lazyFaultReaders {
		r := readers[i]
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer r.Close()
			buf := make([]byte, lazyRun)
			for run := range faults {
				if l.runs[run].Load() == runIn || !l.claimFault(run) {
					continue
				}
				err := l.load(r, buf, run*lazyRun, []int{run})
				l.faultDone(run)
				if err != nil {
					l.fail(err)
					continue
				}
				l.faulted.Add(1)
			}
		}()
	}
	spans := make(chan []int)
	go func() {
		defer close(spans)
		for _, s := range l.fillOrder() {
			select {
			case spans <- s:
			case <-l.stopped:
				return
			}
		}
	}()
	var fill sync.WaitGroup
	for _, r := range readers[lazyFaultReaders:] {
		fill.Add(1)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer fill.Done()
			defer r.Close()
			buf := make([]byte, lazyFillSpan)
			for span := range spans {
				var claimed []int
				for _, run := range span {
					if l.runs[run].CompareAndSwap(runMissing, runClaimed) {
						claimed = append(claimed, run)
					}
				}
				if len(claimed) == 0 {
					continue
				}
				if err := l.load(r, buf, claimed[0]*lazyRun, claimed); err != nil {
					l.fail(err)
					for range spans {
					}
					return
				}
			}
		}()
	}
	return nil
}

// fillOrder is the background fill's work: spans of consecutive runs,
// the hot runs first (hottest first, neighbours merged), then every run
// in order; the fill skips runs already in or claimed.
func (l *lazyLoader) fillOrder() [][]int {
	per := lazyFillSpan / lazyRun
	var out [][]int
	seen := make([]bool, len(l.runs))
	for _, off := range l.src.hot {
		run := int(off / lazyRun)
		if run < 0 || run >= len(l.runs) || seen[run] {
			continue
		}
		seen[run] = true
		if k := len(out); k > 0 {
			last := out[k-1]
			if last[len(last)-1] == run-1 && len(last) < per {
				out[k-1] = append(last, run)
				continue
			}
		}
		out = append(out, []int{run})
	}
	for first := 0; first < len(l.runs); first += per {
		var span []int
		for run := first; run < min(first+per, len(l.runs)); run++ {
			if !seen[run] {
				span = append(span, run)
			}
		}
		if len(span) > 0 {
			out = append(out, span)
		}
	}
	return out
}

// claimFault marks run as loaded by a fault reader; false if another
// fault reader has it already (its copy wakes this fault's thread too).
func (l *lazyLoader) claimFault(run int) bool {
	l.faultsMu.Lock()
	defer l.faultsMu.Unlock()
	if l.inFault[run] {
		return false
	}
	l.inFault[run] = true
	return true
}

func (l *lazyLoader) faultDone(run int) {
	l.faultsMu.Lock()
	delete(l.inFault, run)
	l.faultsMu.Unlock()
}

// load reads the image from off up to the end of the last of runs
// (sorted, within one span of buf) and puts each of runs in: zeros
// through UFFDIO_ZEROPAGE, the rest copied.
func (l *lazyLoader) load(r io.ReaderAt, buf []byte, off int, runs []int) error {
	end := min(int64(runs[len(runs)-1]+1)*lazyRun, l.src.size)
	b := buf[:end-int64(off)]
	var err error
	for try := 0; try < lazyReadTries; try++ {
		t0 := time.Now()
		_, err = r.ReadAt(b, int64(off))
		if d := time.Since(t0); d > lazySlowRead {
			// The guest may be waiting on it: say where the time goes.
			l.log.Warn("takeover: slow read of the RAM image", "offset", off, "bytes", len(b), "took", d.Round(time.Millisecond))
		}
		if err == nil || errors.Is(err, io.EOF) {
			err = nil
			break
		}
		select {
		case <-l.stopped:
			return nil
		case <-time.After(time.Duration(try+1) * 100 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("read the RAM image at %d: %w", off, err)
	}
	for _, run := range runs {
		ro := int64(run) * lazyRun
		chunk := b[ro-int64(off) : min(ro+lazyRun, end)-int64(off)]
		// The image's tail past the last whole page is not guest RAM.
		chunk = chunk[:len(chunk)/pageSize*pageSize]
		if len(chunk) == 0 {
			l.markIn(run, nil)
			continue
		}
		zero := blockhash.IsZero(chunk)
		if zero {
			_, err = l.u.Zero(uint64(ro), uint64(len(chunk)))
		} else {
			_, err = l.u.Copy(uint64(ro), chunk)
		}
		if err != nil {
			return fmt.Errorf("put in RAM at %d: %w", ro, err)
		}
		l.markIn(run, &zero)
	}
	return nil
}

const pageSize = 4096

// markIn records run as in; the last one ends the load.
func (l *lazyLoader) markIn(run int, zero *bool) {
	if l.runs[run].Swap(runIn) == runIn {
		return
	}
	switch {
	case zero != nil && *zero:
		l.zeroed.Add(1)
	default:
		l.filled.Add(1)
	}
	if l.left.Add(-1) == 0 {
		l.mu.Lock()
		l.took = time.Since(l.start)
		l.mu.Unlock()
		// Nothing is missing any more: the registration ends, so that a
		// page QEMU discards later reads as zeros again instead of
		// waiting for a loader that has gone.
		if err := l.u.Unregister(); err != nil {
			l.log.Warn("takeover: end the missing-page registration", "err", err)
		}
		l.log.Info("takeover: guest RAM fully resident", "after", l.took.Round(time.Millisecond),
			"mib", l.src.size>>20, "hot_runs", len(l.src.hot), "runs_on_fault", l.faulted.Load(), "zero_runs", l.zeroed.Load())
		close(l.resident)
		go l.stop()
	}
}

func (l *lazyLoader) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.stopped:
		return // QEMU gone: nothing to load into
	default:
	}
	if l.err == nil {
		l.err = err
		l.log.Error("takeover: lazy RAM load failed: the guest waits on the pages not yet in", "err", err)
	}
}

// stop ends serving: QEMU ended, or every page is in.
func (l *lazyLoader) stop() {
	l.stopOnce.Do(func() {
		close(l.stopped)
		l.u.Close()
	})
}

// wait waits until every page is in, the load failed, or ctx ends. Once
// every page is in (or QEMU ended), it returns only after the loader's
// readers have closed their images: its caller may then close the store
// they read (an RBD store's cluster connection, which closed under an
// open image crashes the process from librbd's threads).
func (l *lazyLoader) wait(ctx context.Context) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-l.resident:
			l.stop()
			l.wg.Wait()
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-l.stopped:
			l.wg.Wait()
			select {
			case <-l.resident:
				return nil
			default:
			}
			return errors.New("takeover: QEMU ended before its RAM was loaded")
		case <-t.C:
			l.mu.Lock()
			err := l.err
			l.mu.Unlock()
			if err != nil {
				return fmt.Errorf("takeover: %w", err)
			}
		}
	}
}

// startLazy registers QEMU's memfd guest RAM for missing-page faults
// before the state stream loads, writes the pages QEMU touched before the
// registration (none, as QEMU 7.2 starts) straight into the memfd, and
// starts the loader.
func startLazy(pid int, src lazySource, log *slog.Logger) (*lazyLoader, error) {
	t0 := time.Now()
	m, err := dirtylog.RegisterMissing(pid, uint64(src.size))
	if err != nil {
		return nil, err
	}
	log.Info("takeover: guest RAM registered for missing-page faults", "took", time.Since(t0).Round(time.Millisecond), "hot_runs", len(src.hot))
	pre, err := m.Prepopulated()
	if err == nil && len(pre) > 0 {
		err = writePrepopulated(m, src, pre)
		log.Info("takeover: pages in guest RAM before the registration, written from the replica", "mib", dirtylog.Pages(pre)*pageSize>>20)
	}
	if err != nil {
		m.Close()
		return nil, err
	}
	l := newLazyLoader(m, src, log)
	if err := l.run(); err != nil {
		m.Close()
		return nil, err
	}
	return l, nil
}

func writePrepopulated(m *dirtylog.Missing, src lazySource, pre []dirtylog.Range) error {
	r, err := src.open()
	if err != nil {
		return err
	}
	defer r.Close()
	buf := make([]byte, lazyFillSpan)
	for _, rg := range pre {
		for off := rg.Start; off < rg.End; off += lazyFillSpan {
			n := min(uint64(lazyFillSpan), rg.End-off)
			if _, err := r.ReadAt(buf[:n], int64(off)); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read the RAM image at %d: %w", off, err)
			}
			if err := m.WriteDirect(off, buf[:n]); err != nil {
				return err
			}
		}
	}
	return nil
}
