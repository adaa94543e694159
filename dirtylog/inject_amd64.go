//go:build linux && amd64

package dirtylog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The return values with which a syscall interrupted by a stop asks the
// kernel to run it again (include/linux/errno.h).
const (
	errRestartSys          = 512
	errRestartNoIntr       = 513
	errRestartNoHand       = 514
	errRestartRestartBlock = 516
)

// injectRegister runs, in pid's main thread, userfaultfd, UFFDIO_API and
// one UFFDIO_REGISTER per region in write-protect-async mode, takes the
// userfaultfd into this process with pidfd_getfd and closes it in pid.
func injectRegister(pid int, regions []Region) (*os.File, error) {
	return injectUffd(pid, regions, wpSpec)
}

// injectUffd is injectRegister in the mode and with the features spec
// says, leaving pid's copy open if spec.Keep.
func injectUffd(pid int, regions []Region, spec uffdSpec) (*os.File, error) {
	maps, err := readMaps(pid)
	if err != nil {
		return nil, err
	}
	sysAddr, err := findSyscall(pid, maps)
	if err != nil {
		return nil, err
	}
	type result struct {
		f   *os.File
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Every ptrace request must come from the thread that attached.
		// The thread is never unlocked: should anything leave the tracee
		// attached, the thread's exit detaches it.
		runtime.LockOSThread()
		in := &injector{pid: pid, tid: pid, sysAddr: sysAddr}
		f, err := in.run(regions, spec)
		done <- result{f, err}
	}()
	r := <-done
	return r.f, r.err
}

func readMaps(pid int) ([]Mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrProcessGone
		}
		return nil, err
	}
	defer f.Close()
	return ParseMaps(f)
}

// findSyscall returns the address of a `syscall` instruction (0f 05) in
// pid's executable mappings, libc's first: the injected calls jump there.
func findSyscall(pid int, maps []Mapping) (uint64, error) {
	exec := slices.DeleteFunc(slices.Clone(maps), func(m Mapping) bool {
		return !m.Exec() || m.Path == "[vsyscall]"
	})
	slices.SortStableFunc(exec, func(a, b Mapping) int {
		la, lb := strings.Contains(a.Path, "libc"), strings.Contains(b.Path, "libc")
		switch {
		case la && !lb:
			return -1
		case lb && !la:
			return 1
		}
		return 0
	})
	buf := make([]byte, 64<<10)
	for _, m := range exec {
		for off := m.Start; off < m.End; off += uint64(len(buf)) - 1 {
			n := min(uint64(len(buf)), m.End-off)
			if err := readRemote(pid, off, buf[:n]); err != nil {
				break
			}
			if i := bytes.Index(buf[:n], []byte{0x0f, 0x05}); i >= 0 {
				return off + uint64(i), nil
			}
		}
	}
	return 0, fmt.Errorf("no syscall instruction in the executable mappings of %d", pid)
}

func readRemote(pid int, addr uint64, b []byte) error {
	n, err := unix.ProcessVMReadv(pid, []unix.Iovec{{Base: &b[0], Len: uint64(len(b))}},
		[]unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}, 0)
	if err != nil {
		return fmt.Errorf("read %d bytes at %#x: %w", len(b), addr, err)
	}
	if n != len(b) {
		return fmt.Errorf("read %d of %d bytes at %#x", n, len(b), addr)
	}
	return nil
}

func writeRemote(pid int, addr uint64, b []byte) error {
	n, err := unix.ProcessVMWritev(pid, []unix.Iovec{{Base: &b[0], Len: uint64(len(b))}},
		[]unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}, 0)
	if err != nil {
		return fmt.Errorf("write %d bytes at %#x: %w", len(b), addr, err)
	}
	if n != len(b) {
		return fmt.Errorf("wrote %d of %d bytes at %#x", n, len(b), addr)
	}
	return nil
}

// injector runs syscalls in one stopped thread of another process.
type injector struct {
	pid, tid int
	sysAddr  uint64
	saved    unix.PtraceRegs
	scratch  uint64 // argument area below the stack's red zone
	old      []byte // the scratch area's bytes before
	signals  []unix.Signal
}

const scratchSize = 256

func (in *injector) run(regions []Region, spec uffdSpec) (_ *os.File, err error) {
	if err := in.seize(); err != nil {
		return nil, err
	}
	defer func() {
		if rerr := in.restore(); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	in.scratch = (in.saved.Rsp - 128 - scratchSize) &^ 15
	in.old = make([]byte, scratchSize)
	if err := readRemote(in.pid, in.scratch, in.old); err != nil {
		in.old = nil
		return nil, fmt.Errorf("stack scratch area: %w", err)
	}
	fd, err := in.syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("userfaultfd in %d: %w", in.pid, err)
	}
	closeRemote := func() error {
		if _, cerr := in.syscall(unix.SYS_CLOSE, fd); cerr != nil {
			return fmt.Errorf("close the userfaultfd in %d: %w", in.pid, cerr)
		}
		return nil
	}
	defer func() {
		if !spec.Keep || err != nil {
			err = errors.Join(err, closeRemote())
		}
	}()
	api := uffdioAPIArg{API: uffdAPI, Features: spec.Features}
	if err := in.call(unix.SYS_IOCTL, fd, uffdioAPI, unsafe.Slice((*byte)(unsafe.Pointer(&api)), unsafe.Sizeof(api))); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("UFFDIO_API with %s: %w (%v)", spec.What, ErrUnsupported, err)
		}
		return nil, fmt.Errorf("UFFDIO_API: %w", err)
	}
	if api.Features&spec.Features != spec.Features {
		return nil, fmt.Errorf("UFFDIO_API features %#x lack %#x: %w", api.Features, spec.Features, ErrUnsupported)
	}
	for _, r := range regions {
		reg := uffdioRegisterArg{Start: r.Start, Len: r.End - r.Start, Mode: spec.Mode}
		if err := in.call(unix.SYS_IOCTL, fd, uffdioRegister, unsafe.Slice((*byte)(unsafe.Pointer(&reg)), unsafe.Sizeof(reg))); err != nil {
			if errors.Is(err, unix.EINVAL) {
				return nil, fmt.Errorf("UFFDIO_REGISTER %#x-%#x %s: %w (%v)", r.Start, r.End, spec.What, ErrUnsupported, err)
			}
			return nil, fmt.Errorf("UFFDIO_REGISTER %#x-%#x: %w", r.Start, r.End, err)
		}
		if reg.Ioctls&spec.Ioctls != spec.Ioctls {
			return nil, fmt.Errorf("UFFDIO_REGISTER %#x-%#x offers ioctls %#x, not %#x: %w", r.Start, r.End, reg.Ioctls, spec.Ioctls, ErrUnsupported)
		}
	}
	pidfd, err := unix.PidfdOpen(in.pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", in.pid, err)
	}
	defer unix.Close(pidfd)
	local, err := unix.PidfdGetfd(pidfd, int(fd), 0) // the new fd is close-on-exec
	if err != nil {
		return nil, fmt.Errorf("pidfd_getfd: %w", err)
	}
	return os.NewFile(uintptr(local), "userfaultfd"), nil
}

// call runs a syscall whose last argument points to arg, copied into the
// scratch area and back.
func (in *injector) call(nr, a0, a1 uint64, arg []byte) error {
	if err := writeRemote(in.pid, in.scratch, arg); err != nil {
		return err
	}
	if _, err := in.syscall(nr, a0, a1, in.scratch); err != nil {
		return err
	}
	return readRemote(in.pid, in.scratch, arg)
}

// seize attaches to the thread and stops it.
func (in *injector) seize() error {
	if _, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SEIZE, uintptr(in.tid), 0, unix.PTRACE_O_TRACESYSGOOD, 0, 0); e != 0 {
		if e == unix.ESRCH {
			return ErrProcessGone
		}
		return fmt.Errorf("PTRACE_SEIZE %d: %w", in.tid, e)
	}
	if err := unix.PtraceInterrupt(in.tid); err != nil {
		unix.PtraceDetach(in.tid)
		return fmt.Errorf("PTRACE_INTERRUPT %d: %w", in.tid, err)
	}
	k, err := in.wait()
	if err == nil && k == stopGroup {
		err = fmt.Errorf("process %d is stopped (SIGSTOP): its guest cannot be tracked now", in.pid)
	}
	if err == nil {
		err = unix.PtraceGetRegs(in.tid, &in.saved)
	}
	if err != nil {
		unix.PtraceDetach(in.tid)
		return err
	}
	return nil
}

type stopKind int

const (
	stopEvent stopKind = iota
	stopGroup
	stopSyscall
	stopSignal
)

// wait waits for the next stop of the thread; a signal it stopped for is
// held back and sent again once the thread is released.
func (in *injector) wait() (stopKind, error) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(in.tid, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("wait for thread %d: %w", in.tid, err)
		}
		break
	}
	switch {
	case ws.Exited() || ws.Signaled():
		return 0, ErrProcessGone
	case !ws.Stopped():
		return 0, fmt.Errorf("thread %d: unexpected wait status %#x", in.tid, uint32(ws))
	case uint32(ws)>>16 == unix.PTRACE_EVENT_STOP:
		if ws.StopSignal() == unix.SIGTRAP {
			return stopEvent, nil
		}
		return stopGroup, nil
	case ws.StopSignal() == unix.SIGTRAP|0x80:
		return stopSyscall, nil
	default:
		in.signals = append(in.signals, ws.StopSignal())
		return stopSignal, nil
	}
}

// toSyscallStop resumes the thread until its next syscall stop.
func (in *injector) toSyscallStop() error {
	for {
		if err := unix.PtraceSyscall(in.tid, 0); err != nil {
			return fmt.Errorf("PTRACE_SYSCALL %d: %w", in.tid, err)
		}
		k, err := in.wait()
		if err != nil {
			return err
		}
		switch k {
		case stopSyscall:
			return nil
		case stopGroup:
			return fmt.Errorf("process %d was stopped (SIGSTOP) while tracking was set up", in.pid)
		}
	}
}

// syscall runs syscall nr with args in the thread and returns its result.
func (in *injector) syscall(nr uint64, args ...uint64) (uint64, error) {
	regs := in.saved
	regs.Rip = in.sysAddr
	regs.Rax = nr
	// No syscall in progress: the kernel must not rewrite these registers
	// to restart the one the thread was stopped in.
	regs.Orig_rax = ^uint64(0)
	a := make([]uint64, 6)
	copy(a, args)
	regs.Rdi, regs.Rsi, regs.Rdx, regs.R10, regs.R8, regs.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	if err := unix.PtraceSetRegs(in.tid, &regs); err != nil {
		return 0, fmt.Errorf("set registers: %w", err)
	}
	if err := in.toSyscallStop(); err != nil { // entry
		return 0, err
	}
	if err := unix.PtraceGetRegs(in.tid, &regs); err != nil {
		return 0, fmt.Errorf("get registers: %w", err)
	}
	if regs.Orig_rax != nr {
		return 0, fmt.Errorf("thread %d entered syscall %d, not the injected %d", in.tid, int64(regs.Orig_rax), nr)
	}
	if err := in.toSyscallStop(); err != nil { // exit
		return 0, err
	}
	if err := unix.PtraceGetRegs(in.tid, &regs); err != nil {
		return 0, fmt.Errorf("get registers: %w", err)
	}
	if r := int64(regs.Rax); r < 0 && r > -4096 {
		return 0, unix.Errno(-r)
	}
	return regs.Rax, nil
}

// restore puts back the scratch area and the registers, detaches, and
// sends the signals held back. A syscall the thread was stopped in is set
// up to run again, as the kernel does for a signal without a handler (and
// as CRIU does): its -ERESTART* return becomes the syscall number again
// and the instruction pointer goes back over the 2-byte syscall
// instruction.
func (in *injector) restore() error {
	var errs []error
	if in.old != nil {
		if err := writeRemote(in.pid, in.scratch, in.old); err != nil {
			errs = append(errs, fmt.Errorf("restore the stack scratch area: %w", err))
		}
	}
	regs := restartRegs(in.saved)
	if err := unix.PtraceSetRegs(in.tid, &regs); err != nil {
		errs = append(errs, fmt.Errorf("restore registers of %d: %w", in.tid, err))
	}
	if err := unix.PtraceDetach(in.tid); err != nil {
		errs = append(errs, fmt.Errorf("detach from %d: %w", in.tid, err))
	}
	for _, s := range in.signals {
		if err := unix.Tgkill(in.pid, in.tid, s); err != nil {
			errs = append(errs, fmt.Errorf("send held signal %v again: %w", s, err))
		}
	}
	return errors.Join(errs...)
}

// restartRegs returns the registers to resume a thread with that was
// stopped with regs, having run other syscalls since.
func restartRegs(regs unix.PtraceRegs) unix.PtraceRegs {
	if int64(regs.Orig_rax) >= 0 {
		switch -int64(regs.Rax) {
		case errRestartSys, errRestartNoIntr, errRestartNoHand:
			regs.Rax = regs.Orig_rax
			regs.Rip -= 2
		case errRestartRestartBlock:
			regs.Rax = unix.SYS_RESTART_SYSCALL
			regs.Rip -= 2
		}
	}
	regs.Orig_rax = ^uint64(0)
	return regs
}
