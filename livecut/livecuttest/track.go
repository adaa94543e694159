package livecuttest

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/migstream"
)

// WriteRAM is the guest writing pages of its RAM (each byte of a page
// changes), as a tracker sees it.
func (f *Fake) WriteRAM(pages ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range pages {
		pg := f.RAM[p*migstream.PageSize : (p+1)*migstream.PageSize]
		for i := range pg {
			pg[i]++
		}
		if f.tracking {
			f.written[p] = true
		}
	}
}

// TrackRAM is a livecut.Options.TrackRAM over the fake's RAM, as
// dirtylog.Guest follows a shared backend: the first Scan reports all of
// it, each later one the pages WriteRAM wrote since the previous Scan.
// Scans go in the trace ("ram-scan", "ram-scan while running" for a
// tracked cut's precopy); an arming scan while the guest runs fails the
// test, since its pages would not be the cut's.
func (f *Fake) TrackRAM() (livecut.RAMTracker, error) {
	return &tracker{f: f}, nil
}

type tracker struct {
	f      *Fake
	closed bool
}

func (t *tracker) Scan() ([]dirtylog.Range, error) {
	f := t.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if t.closed {
		return nil, errors.New("livecuttest: scan of a closed tracker")
	}
	running := ""
	if f.Status == "running" {
		running = " while running"
	}
	if !f.tracking {
		if running != "" && f.T != nil {
			f.T.Errorf("livecuttest: guest RAM tracking armed while the guest runs")
		}
		f.tracking, f.written = true, map[int]bool{}
		f.traceLocked("ram-scan: all")
		return []dirtylog.Range{{Start: 0, End: uint64(len(f.RAM))}}, nil
	}
	pages := slices.Sorted(maps.Keys(f.written))
	f.written = map[int]bool{}
	var out []dirtylog.Range
	var names []string
	for _, p := range pages {
		names = append(names, fmt.Sprint(p))
		r := dirtylog.Range{Start: uint64(p * migstream.PageSize), End: uint64((p + 1) * migstream.PageSize)}
		if n := len(out); n > 0 && out[n-1].End == r.Start {
			out[n-1].End = r.End
			continue
		}
		out = append(out, r)
	}
	f.traceLocked("ram-scan" + running + ": pages [" + strings.Join(names, " ") + "]")
	return out, nil
}

func (t *tracker) ReadAt(p []byte, off int64) (int, error) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	return copy(p, t.f.RAM[off:]), nil
}

// Close ends the tracking: writes are no longer recorded.
func (t *tracker) Close() error {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	if !t.closed {
		t.closed, t.f.tracking, t.f.written = true, false, nil
	}
	return nil
}
