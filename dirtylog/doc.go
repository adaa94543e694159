// Package dirtylog finds the pages of a QEMU guest's RAM written since the
// last look, without QEMU's help and without reading all of RAM.
//
// Guest RAM must be a shared memory backend (memory-backend-memfd,
// share=on), mapped in QEMU as /memfd:memory-backend-memfd; MemfdRAM finds
// it in /proc/PID/maps (ParseMaps). Track then makes QEMU register a
// userfaultfd in write-protect-async mode over that mapping (Linux 6.7+):
// the kernel resolves a write fault on a protected page by itself (the
// vCPU never waits for anyone) and clears the page's protection, and
// PAGEMAP_SCAN on /proc/PID/pagemap (Scan) lists the pages whose protection
// is gone and protects them again in the same walk, so no write between
// two scans is lost. The first Scan lists every page and arms the
// protection.
//
// A userfaultfd tracks the memory of the process that created it, so
// QEMU itself must make the calls: Track stops QEMU's main thread with
// ptrace (PTRACE_SEIZE, PTRACE_INTERRUPT), saves its registers, and runs
// userfaultfd, UFFDIO_API and UFFDIO_REGISTER in it by pointing the
// instruction pointer at a `syscall` instruction found in its executable
// mappings (libc's first) and stopping at each syscall's exit; ioctl
// arguments are written below the stack's red zone with process_vm_writev
// (and the bytes there put back). drsync then takes the userfaultfd with
// pidfd_getfd and closes QEMU's copy, so drsync holds the only reference:
// when drsync closes it or dies, the kernel un-registers the mapping and
// removes every protection, and QEMU runs on untracked
// (TestKilledTrackerLeavesNoProtection). The registers are put back as
// the kernel would have left them had no one stopped the thread: a
// syscall it was blocked in (QEMU's ppoll) returned -ERESTART*, and is set
// up to run again (the number back in rax, rip back over the syscall
// instruction; restart_syscall for -ERESTART_RESTARTBLOCK), as CRIU does.
// A signal that arrives during the injection is held and sent again after
// the detach.
//
// RegisterMissing (missing.go) injects the same way a userfaultfd in
// MISSING mode over the memfd (UFFD_FEATURE_MISSING_SHMEM) for a takeover
// that loads RAM while the guest runs: the caller serves each first touch
// of a page with UFFDIO_COPY or UFFDIO_ZEROPAGE. QEMU keeps its copy of
// that userfaultfd, so a server that dies leaves faults waiting, never
// zero-filled (TestMissingServerGoneBlocks).
//
// What it does not see: writes to the memory through another process's
// mapping (a vhost-user back-end). Writes by the kernel on QEMU's behalf
// (a read(2) into guest RAM) fault like any other and are seen.
//
// Needs: root (or CAP_SYS_PTRACE), x86-64 (ErrUnsupported elsewhere), a
// kernel with UFFD_FEATURE_WP_ASYNC, WP_UNPOPULATED, WP_HUGETLBFS_SHMEM
// and PAGEMAP_SCAN (ErrUnsupported otherwise, so callers fall back to
// reading all of RAM). The constants Debian 12's headers lack are in
// kernel.go.
package dirtylog
