package dirtylog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Missing holds a userfaultfd registered in MISSING mode over a QEMU
// process's shared memfd guest RAM (RegisterMissing): every first access
// to a page the memfd does not hold yet stops the accessing thread and is
// reported (Fault) until someone puts the page in (Copy, Zero). This is
// how RAM is loaded lazily: the guest runs before its memory is there.
//
// The process keeps its own copy of the userfaultfd (the injection leaves
// it open), so the registration outlives this process: should drsync die
// before every page is in, a thread touching a missing page waits for
// ever (a hung guest, which an operator sees and restarts) rather than
// finding the page filled with zeros, which is what the kernel does once
// the last reference to the userfaultfd is gone
// (TestMissingServerGoneBlocks). Unregister, once every page is in, ends
// the registration for the process too.
type Missing struct {
	pid     int
	regions []Region
	size    uint64

	f  *os.File // non-blocking: reads wait in the runtime's poller
	rc interface {
		Control(func(fd uintptr)) error
	}
	mu     sync.Mutex
	closed bool
}

const (
	uffdioUnregister = 0x8010aa01 // _IOR(0xAA, 0x01, struct uffdio_range)
	uffdioCopy       = 0xc028aa03 // _IOWR(0xAA, 0x03, struct uffdio_copy)
	uffdioZeropage   = 0xc020aa04 // _IOWR(0xAA, 0x04, struct uffdio_zeropage)

	uffdIoctlCopy     = 1 << 3 // 1 << _UFFDIO_COPY
	uffdIoctlZeropage = 1 << 4 // 1 << _UFFDIO_ZEROPAGE

	// uffdFeatureMissingShmem: MISSING faults on shared memory (memfd).
	uffdFeatureMissingShmem = 1 << 5

	uffdEventPagefault = 0x12
	uffdMsgSize        = 32
)

var missingSpec = uffdSpec{Mode: uffdRegisterModeMissing, Features: uffdFeatureMissingShmem,
	Ioctls: uffdIoctlCopy | uffdIoctlZeropage, Keep: true, What: "missing-page faults on shared memory"}

type uffdioCopyArg struct {
	Dst, Src, Len, Mode uint64
	Copy                int64
}

type uffdioZeropageArg struct {
	Start, Len, Mode uint64
	Zeropage         int64
}

// MissingSupported says whether this kernel and process can serve
// missing-page faults of shared memory: ErrUnsupported if not.
func MissingSupported() error {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if e != 0 {
		return fmt.Errorf("userfaultfd: %w (%v)", ErrUnsupported, e)
	}
	defer unix.Close(int(fd))
	api := uffdioAPIArg{API: uffdAPI, Features: uffdFeatureMissingShmem}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uffdioAPI, uintptr(unsafe.Pointer(&api))); e != 0 {
		return fmt.Errorf("UFFDIO_API with %s: %w (%v)", missingSpec.What, ErrUnsupported, e)
	}
	if runtime.GOARCH != "amd64" {
		return fmt.Errorf("syscall injection on %s: %w", runtime.GOARCH, ErrUnsupported)
	}
	return nil
}

// RegisterMissing finds the shared memfd backend of size bytes in QEMU
// process pid (as TrackGuest does) and registers it for missing-page
// faults, by injection into pid. It must run before anything in pid
// touches the memory: a page already there is never reported (see
// Prepopulated).
func RegisterMissing(pid int, size uint64) (*Missing, error) {
	regions, err := guestRAM(pid, size)
	if err != nil {
		return nil, err
	}
	return RegisterMissingRegions(pid, regions)
}

// RegisterMissingRegions registers regions of pid (page-aligned, each a
// shared memory mapping) for missing-page faults.
func RegisterMissingRegions(pid int, regions []Region) (*Missing, error) {
	if err := checkRegions(regions); err != nil {
		return nil, fmt.Errorf("register %d: %w", pid, err)
	}
	var size uint64
	for _, r := range regions {
		size = max(size, r.Offset+r.End-r.Start)
	}
	inject := func(pid int, regions []Region) (*os.File, error) { return injectUffd(pid, regions, missingSpec) }
	if isChild(pid) {
		inject = func(pid int, regions []Region) (*os.File, error) { return registerViaSpec(pid, regions, missingSpec) }
	}
	f, err := inject(pid, regions)
	if err != nil {
		return nil, fmt.Errorf("register missing-page faults in %d: %w", pid, err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Missing{pid: pid, regions: regions, size: size, f: f, rc: rc}, nil
}

// Size is the size of the registered memory, in block offsets.
func (m *Missing) Size() uint64 { return m.size }

// addr is the address in the process of block offset off, and how many
// bytes from there the region holds.
func (m *Missing) addr(off uint64) (uint64, uint64, bool) {
	for _, r := range m.regions {
		if off >= r.Offset && off < r.Offset+(r.End-r.Start) {
			return r.Start + off - r.Offset, r.Offset + (r.End - r.Start) - off, true
		}
	}
	return 0, 0, false
}

// Faults reads the pending missing-page faults into offs (block offsets,
// page-aligned), waiting for one if none is pending; io.EOF once Close
// was called.
func (m *Missing) Faults(offs []uint64) (int, error) {
	buf := make([]byte, uffdMsgSize*len(offs))
	n, err := m.f.Read(buf)
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return 0, io.EOF
		}
		return 0, fmt.Errorf("read faults of %d: %w", m.pid, err)
	}
	k := 0
	for i := 0; i+uffdMsgSize <= n; i += uffdMsgSize {
		msg := buf[i : i+uffdMsgSize]
		if msg[0] != uffdEventPagefault {
			continue
		}
		a := *(*uint64)(unsafe.Pointer(&msg[16])) &^ (pageSize - 1)
		for _, r := range m.regions {
			if a >= r.Start && a < r.End {
				offs[k] = a - r.Start + r.Offset
				k++
				break
			}
		}
	}
	return k, nil
}

// Copy puts data in at block offset off (page-aligned, whole pages), and
// wakes the threads waiting for those pages. A page already there (put
// in by another Copy, or by Zero) is left as it is, never overwritten:
// the guest may have written to it since. It returns how many bytes it
// put in.
func (m *Missing) Copy(off uint64, data []byte) (int, error) {
	if off%pageSize != 0 || len(data)%pageSize != 0 {
		return 0, fmt.Errorf("copy %d bytes at %#x: not whole pages", len(data), off)
	}
	return m.fill(off, uint64(len(data)), func(dst, pos, n uint64) (int64, unix.Errno) {
		arg := uffdioCopyArg{Dst: dst, Src: uint64(uintptr(unsafe.Pointer(&data[pos]))), Len: n}
		e := m.ioctl(uffdioCopy, unsafe.Pointer(&arg))
		runtime.KeepAlive(data)
		return arg.Copy, e
	})
}

// Zero puts zero pages in at [off, off+n), leaving pages already there.
func (m *Missing) Zero(off, n uint64) (int, error) {
	if off%pageSize != 0 || n%pageSize != 0 {
		return 0, fmt.Errorf("zero %d bytes at %#x: not whole pages", n, off)
	}
	return m.fill(off, n, func(dst, _, n uint64) (int64, unix.Errno) {
		arg := uffdioZeropageArg{Start: dst, Len: n}
		e := m.ioctl(uffdioZeropage, unsafe.Pointer(&arg))
		return arg.Zeropage, e
	})
}

// fill runs op (UFFDIO_COPY or UFFDIO_ZEROPAGE) over [off, off+n), region
// by region, stepping over pages already there: the kernel stops at the
// first one (EEXIST, or EAGAIN with the bytes done before it).
func (m *Missing) fill(off, n uint64, op func(dst, pos, n uint64) (int64, unix.Errno)) (int, error) {
	done := 0
	for pos := uint64(0); pos < n; {
		dst, room, ok := m.addr(off + pos)
		if !ok {
			return done, fmt.Errorf("offset %#x is outside the registered memory", off+pos)
		}
		step := min(room, n-pos)
		did, e := op(dst, pos, step)
		switch {
		case e == 0:
			done += int(step)
			pos += step
		case did > 0:
			done += int(did)
			pos += uint64(did)
		case e == unix.EEXIST:
			pos += pageSize
		case e == unix.EAGAIN || e == unix.EINTR:
		case e == unix.ESRCH || e == unix.ENOSPC:
			// The process is gone (its memory with it).
			return done, fmt.Errorf("fill %#x: %w", off+pos, ErrProcessGone)
		default:
			return done, fmt.Errorf("fill %#x (%d bytes) in %d: %w", off+pos, step, m.pid, e)
		}
	}
	return done, nil
}

func (m *Missing) ioctl(req uintptr, arg unsafe.Pointer) unix.Errno {
	var e unix.Errno
	if err := m.rc.Control(func(fd uintptr) {
		_, _, e = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	}); err != nil {
		return unix.EBADF
	}
	return e
}

// Prepopulated lists the ranges (block offsets) the memfd holds already:
// pages the process touched before the registration, which are never
// reported as faults and must be written with WriteDirect before the
// guest runs.
func (m *Missing) Prepopulated() ([]Range, error) {
	f, err := m.openMemfd()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Range
	for off := int64(0); off < int64(m.size); {
		d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		} else if err != nil {
			return nil, fmt.Errorf("SEEK_DATA in the guest RAM of %d: %w", m.pid, err)
		}
		h, err := unix.Seek(int(f.Fd()), d, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("SEEK_HOLE in the guest RAM of %d: %w", m.pid, err)
		}
		out = append(out, Range{Start: uint64(d), End: uint64(min(h, int64(m.size)))})
		off = h
	}
	return out, nil
}

// WriteDirect writes data at block offset off through the memfd itself,
// pages there or not; for pages Prepopulated lists, and only while the
// guest does not run.
func (m *Missing) WriteDirect(off uint64, data []byte) error {
	f, err := m.openMemfd()
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(data, int64(off)); err != nil {
		return fmt.Errorf("write the guest RAM of %d: %w", m.pid, err)
	}
	return nil
}

// openMemfd opens the memfd the first region maps, through
// /proc/PID/map_files (root).
func (m *Missing) openMemfd() (*os.File, error) {
	maps, err := readMaps(m.pid)
	if err != nil {
		return nil, err
	}
	r := m.regions[0]
	for _, mp := range maps {
		if mp.Start == r.Start {
			f, err := os.OpenFile(fmt.Sprintf("/proc/%d/map_files/%x-%x", m.pid, mp.Start, mp.End), os.O_RDWR, 0)
			if err != nil {
				return nil, fmt.Errorf("open the guest RAM of %d: %w", m.pid, err)
			}
			if mp.Offset != r.Offset {
				f.Close()
				return nil, fmt.Errorf("guest RAM of %d: the mapping at %#x starts at file offset %#x, not %#x", m.pid, mp.Start, mp.Offset, r.Offset)
			}
			return f, nil
		}
	}
	return nil, fmt.Errorf("guest RAM of %d: no mapping at %#x: %w", m.pid, r.Start, ErrProcessGone)
}

// Unregister ends the registration (for the process's copy of the
// userfaultfd too): once every page is in, nothing is missing any more,
// and a page the process discards later (a balloon) must read as zeros
// again rather than wait for a server that has gone.
func (m *Missing) Unregister() error {
	var errs []error
	for _, r := range m.regions {
		arg := [2]uint64{r.Start, r.End - r.Start}
		if e := m.ioctl(uffdioUnregister, unsafe.Pointer(&arg)); e != 0 && e != unix.ESRCH {
			errs = append(errs, fmt.Errorf("UFFDIO_UNREGISTER %#x-%#x in %d: %w", r.Start, r.End, m.pid, e))
		}
	}
	return errors.Join(errs...)
}

// Close drops this process's reference to the userfaultfd; Faults
// returns io.EOF. The process's own copy keeps the registration (see
// Missing) unless Unregister ran.
func (m *Missing) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	return m.f.Close()
}
