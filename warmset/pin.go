package warmset

import (
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// Pin keeps ranges of a file resident in memory: it maps the file shared
// and read-only and mlocks the ranges, which pins their page-cache pages.
// Writes to the file (a replica applying an epoch) land in those same
// pages, so pinned pages stay current.
type Pin struct {
	f      *os.File
	mem    []byte
	locked []Run
}

// OpenPin maps the first size bytes of the file at path.
func OpenPin(path string, size int64) (*Pin, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("warmset: %w", err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("warmset: map %s: %w", path, err)
	}
	return &Pin{f: f, mem: mem}, nil
}

// Set makes runs the pinned set: ranges no longer in it are unlocked,
// new ones locked (read from storage if they were not resident).
func (p *Pin) Set(runs []Run) error {
	for _, r := range Diff(p.locked, runs) {
		unix.Munlock(p.span(r))
	}
	kept := Diff(p.locked, Diff(p.locked, runs)) // still wanted, still locked
	var added []Run
	for _, r := range Diff(runs, p.locked) {
		if err := unix.Mlock(p.span(r)); err != nil {
			// Over RLIMIT_MEMLOCK, say: keep what is locked.
			p.locked = merge(kept, added)
			return fmt.Errorf("warmset: lock %d pages at page %d: %w", r.Count, r.First, err)
		}
		added = append(added, r)
	}
	p.locked = runs
	return nil
}

// merge returns the union of two run lists as ascending runs.
func merge(a, b []Run) []Run {
	seen := map[int64]bool{}
	var pages []int64
	for _, rs := range [][]Run{a, b} {
		for _, r := range rs {
			for p := r.First; p < r.First+r.Count; p++ {
				if !seen[p] {
					seen[p] = true
					pages = append(pages, p)
				}
			}
		}
	}
	var out []Run
	slices.Sort(pages)
	for _, p := range pages {
		if k := len(out); k > 0 && out[k-1].First+out[k-1].Count == p {
			out[k-1].Count++
		} else {
			out = append(out, Run{First: p, Count: 1})
		}
	}
	return out
}

func (p *Pin) span(r Run) []byte {
	lo := min(r.First*PageSize, int64(len(p.mem)))
	hi := min((r.First+r.Count)*PageSize, int64(len(p.mem)))
	return p.mem[lo:hi]
}

// Locked is how many bytes are pinned.
func (p *Pin) Locked() int64 { return HotBytes(p.locked) }

// Close unpins everything and unmaps the file.
func (p *Pin) Close() error {
	err := unix.Munmap(p.mem)
	if cerr := p.f.Close(); err == nil {
		err = cerr
	}
	return err
}
