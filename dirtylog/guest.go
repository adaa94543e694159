package dirtylog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// MemfdBackendName is the name QEMU's memory-backend-memfd gives its
// memfd, whatever the backend's id.
const MemfdBackendName = "memory-backend-memfd"

// Guest tracks the RAM block of a QEMU process that lives in a shared
// memfd backend, in the block's own offsets: Scan reports the written
// ranges, ReadAt reads the guest's RAM as it is now.
type Guest struct {
	tr *Tracker

	mu  sync.Mutex
	mem *os.File // /proc/PID/mem
}

// guestRAM is where QEMU process pid maps its shared memfd backend of
// size bytes.
func guestRAM(pid int, size uint64) ([]Region, error) {
	maps, err := readMaps(pid)
	if err != nil {
		return nil, fmt.Errorf("guest RAM of %d: %w", pid, err)
	}
	regions, err := MemfdRAM(maps, MemfdBackendName, size)
	if err != nil {
		return nil, fmt.Errorf("guest RAM of %d: %w", pid, err)
	}
	return regions, nil
}

// TrackGuest finds the shared memfd backend of size bytes in QEMU process
// pid and tracks it (Track).
func TrackGuest(pid int, size uint64) (*Guest, error) {
	regions, err := guestRAM(pid, size)
	if err != nil {
		return nil, fmt.Errorf("track %w", err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, fmt.Errorf("track guest RAM of %d: %w", pid, err)
	}
	tr, err := Track(pid, regions)
	if err != nil {
		mem.Close()
		return nil, err
	}
	return &Guest{tr: tr, mem: mem}, nil
}

// Scan reports the ranges written since the previous Scan (all of RAM at
// the first) and protects them again.
func (g *Guest) Scan() ([]Range, error) { return g.tr.Scan() }

// ReadAt reads guest RAM at block offset off.
func (g *Guest) ReadAt(p []byte, off int64) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mem == nil {
		return 0, errors.New("guest RAM: tracker closed")
	}
	n := 0
	for n < len(p) {
		o := uint64(off) + uint64(n)
		r, ok := g.region(o)
		if !ok {
			return n, io.EOF
		}
		chunk := p[n:min(len(p), n+int(r.End-r.Start-(o-r.Offset)))]
		k, err := g.mem.ReadAt(chunk, int64(r.Start+o-r.Offset))
		n += k
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, os.ErrProcessDone) {
				err = ErrProcessGone
			}
			return n, fmt.Errorf("read guest RAM at %#x: %w", o, err)
		}
	}
	return n, nil
}

func (g *Guest) region(off uint64) (Region, bool) {
	for _, r := range g.tr.regions {
		if off >= r.Offset && off < r.Offset+(r.End-r.Start) {
			return r, true
		}
	}
	return Region{}, false
}

// Close ends the tracking: QEMU's RAM is no longer write-protected.
func (g *Guest) Close() error {
	g.mu.Lock()
	if g.mem != nil {
		g.mem.Close()
		g.mem = nil
	}
	g.mu.Unlock()
	return g.tr.Close()
}
