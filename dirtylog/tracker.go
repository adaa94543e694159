package dirtylog

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnsupported says the kernel (or architecture) lacks what tracking
// needs: userfaultfd write-protect-async on shared memory, PAGEMAP_SCAN.
// The caller falls back to reading all of RAM.
var ErrUnsupported = errors.New("dirty-page tracking is not supported here")

// ErrProcessGone says the tracked process ended.
var ErrProcessGone = errors.New("tracked process ended")

// Tracker holds the write-protect tracking of one process's guest RAM.
// The userfaultfd lives only in this process: closing it (or this process
// dying) un-registers the ranges, and the tracked process runs on with no
// write-protection.
type Tracker struct {
	pid     int
	regions []Region

	mu      sync.Mutex
	uffd    *os.File
	pagemap *os.File
	vec     []pageRegion
}

// Track makes process pid register a write-protect-async userfaultfd over
// regions (page-aligned addresses in pid), by running the syscalls in one
// of its threads under ptrace, and takes the userfaultfd over. The first
// Scan reports every page of the regions and arms the protection; each
// later Scan reports the pages written since the one before.
//
// The thread is stopped for the few injected syscalls; a syscall it was
// blocked in is restarted as the kernel would after a signal without a
// handler. Writes by other processes mapping the same memory (vhost-user
// back-ends) are not seen.
func Track(pid int, regions []Region) (*Tracker, error) {
	if err := checkRegions(regions); err != nil {
		return nil, fmt.Errorf("track: %w", err)
	}
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return nil, fmt.Errorf("track %d: %w", pid, err)
	}
	inject := injectRegister
	if isChild(pid) {
		inject = registerVia
	}
	uffd, err := inject(pid, regions)
	if err != nil {
		pagemap.Close()
		return nil, fmt.Errorf("track %d: %w", pid, err)
	}
	return &Tracker{pid: pid, regions: regions, uffd: uffd, pagemap: pagemap, vec: make([]pageRegion, 4096)}, nil
}

// checkRegions refuses an empty list and regions that are not whole,
// page-aligned ranges: userfaultfd registers pages.
func checkRegions(regions []Region) error {
	if len(regions) == 0 {
		return errors.New("no regions")
	}
	for _, r := range regions {
		if r.End <= r.Start || r.Start%pageSize != 0 || r.End%pageSize != 0 {
			return fmt.Errorf("region %#x-%#x is not page-aligned", r.Start, r.End)
		}
	}
	return nil
}

// Regions returns the tracked regions.
func (t *Tracker) Regions() []Region { return t.regions }

// Scan returns the ranges of the regions written since the previous Scan
// (all of them at the first), as guest offsets (Region.Offset-based),
// sorted and merged, and write-protects them again in the same walk, so no
// write between two scans is lost.
func (t *Tracker) Scan() ([]Range, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.uffd == nil {
		return nil, errors.New("scan: tracker closed")
	}
	var out []Range
	for _, r := range t.regions {
		start := r.Start
		for start < r.End {
			arg := pmScanArg{
				Size:         uint64(unsafe.Sizeof(pmScanArg{})),
				Flags:        pmScanWPMatching | pmScanCheckWPAsync,
				Start:        start,
				End:          r.End,
				Vec:          uint64(uintptr(unsafe.Pointer(&t.vec[0]))),
				VecLen:       uint64(len(t.vec)),
				CategoryMask: pageIsWritten,
				ReturnMask:   pageIsWritten,
			}
			n, _, errno := unix.Syscall(unix.SYS_IOCTL, t.pagemap.Fd(), pagemapScan, uintptr(unsafe.Pointer(&arg)))
			runtime.KeepAlive(t.vec)
			if errno != 0 {
				if errno == unix.ESRCH {
					return nil, fmt.Errorf("scan %d: %w", t.pid, ErrProcessGone)
				}
				if errno == unix.ENOTTY || errno == unix.EINVAL {
					return nil, fmt.Errorf("scan %d: PAGEMAP_SCAN: %w (%v)", t.pid, ErrUnsupported, errno)
				}
				return nil, fmt.Errorf("scan %d: PAGEMAP_SCAN: %w", t.pid, errno)
			}
			for _, pr := range t.vec[:n] {
				g := Range{Start: pr.Start - r.Start + r.Offset, End: pr.End - r.Start + r.Offset}
				if k := len(out); k > 0 && out[k-1].End == g.Start {
					out[k-1].End = g.End
				} else {
					out = append(out, g)
				}
			}
			if arg.WalkEnd <= start {
				return nil, fmt.Errorf("scan %d: PAGEMAP_SCAN made no progress at %#x", t.pid, start)
			}
			start = arg.WalkEnd
		}
	}
	return out, nil
}

// Close drops the userfaultfd: the kernel removes the write-protection
// from every page and un-registers the ranges.
func (t *Tracker) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.uffd == nil {
		return nil
	}
	err := t.uffd.Close()
	t.pagemap.Close()
	t.uffd = nil
	return err
}

// Range is [Start, End) in bytes.
type Range struct{ Start, End uint64 }

// Pages is the number of pages the ranges cover.
func Pages(rs []Range) int {
	n := 0
	for _, r := range rs {
		n += int((r.End - r.Start) / pageSize)
	}
	return n
}
