package dirtylog

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// CheckKernel reports whether this kernel and architecture can track a
// guest's writes (ErrUnsupported if not), without touching any guest: it
// asks for the userfaultfd features in this process and runs an empty
// PAGEMAP_SCAN on its own pagemap. A configuration can then refuse
// tracking at start rather than fall back at the first cut.
func CheckKernel() error {
	if runtime.GOARCH != "amd64" {
		return fmt.Errorf("syscall injection on %s/%s: %w", runtime.GOOS, runtime.GOARCH, ErrUnsupported)
	}
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC, 0, 0)
	if errno != 0 {
		if errno == unix.ENOSYS {
			return fmt.Errorf("userfaultfd: %w (%v)", ErrUnsupported, errno)
		}
		return fmt.Errorf("userfaultfd: %w", errno)
	}
	defer unix.Close(int(fd))
	api := uffdioAPIArg{API: uffdAPI, Features: uffdFeatures}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, uffdioAPI, uintptr(unsafe.Pointer(&api))); errno != 0 {
		if errno == unix.EINVAL {
			return fmt.Errorf("UFFDIO_API with write-protect-async: %w (%v)", ErrUnsupported, errno)
		}
		return fmt.Errorf("UFFDIO_API: %w", errno)
	}
	if api.Features&uffdFeatures != uffdFeatures {
		return fmt.Errorf("UFFDIO_API features %#x lack %#x: %w", api.Features, uffdFeatures, ErrUnsupported)
	}
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return fmt.Errorf("check PAGEMAP_SCAN: %w", err)
	}
	defer pm.Close()
	var vec [1]pageRegion
	// An empty range: the kernel checks the request and walks nothing.
	arg := pmScanArg{Size: uint64(unsafe.Sizeof(pmScanArg{})), Start: pageSize, End: pageSize,
		Vec: uint64(uintptr(unsafe.Pointer(&vec[0]))), VecLen: 1, CategoryMask: pageIsWritten, ReturnMask: pageIsWritten}
	_, _, errno = unix.Syscall(unix.SYS_IOCTL, pm.Fd(), pagemapScan, uintptr(unsafe.Pointer(&arg)))
	runtime.KeepAlive(&vec)
	if errno == unix.ENOTTY {
		return fmt.Errorf("PAGEMAP_SCAN: %w (%v)", ErrUnsupported, errno)
	}
	if errno != 0 {
		return fmt.Errorf("PAGEMAP_SCAN: %w", errno)
	}
	return nil
}
