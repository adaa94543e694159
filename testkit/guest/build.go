// Package guest runs a small Linux guest under QEMU for end-to-end tests of
// replication with real VMs.
//
// The guest (testdata/guest) is a Debian kernel and an initramfs whose
// program, testkit/guest/workload, keeps a counter in RAM, prints
// "TICK <counter> <last record seq>" on the serial console every 50 ms,
// writes numbered, checksummed records (package record) to its first disk
// with O_DIRECT|O_DSYNC and keeps dirtying memory. Build builds it (cached),
// Launch boots it with QEMU and collects its console lines with host
// timestamps (two guests joined by NIC can message each other, see
// MessageArgs), VerifyRecords checks that a disk image holds one consistent
// ring of records, and MaxGap measures how long the guest stopped ticking.
//
// Guests run with TCG (KVM guests hang on the test hosts) and boot in about
// 6 s. Tests that boot one are skipped when QEMU or busybox is missing; the
// first Build downloads the kernel package with apt-get.
package guest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var built struct {
	once           sync.Once
	kernel, initrd string
	output         []byte
	err            error
	logged         bool
	mu             sync.Mutex
}

// Build builds the guest kernel and initramfs with testdata/guest/build.sh,
// once per test binary, and returns their paths. It skips the test when
// qemu-system-x86_64 or busybox is not installed and fails it when the build
// fails.
func Build(t testing.TB) (kernel, initrd string) {
	t.Helper()
	for _, tool := range []string{"qemu-system-x86_64", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make deps installs qemu-system-x86 and busybox-static); skipping guest test", tool)
		}
	}
	built.once.Do(func() {
		dir, err := scriptDir()
		if err != nil {
			built.err = err
			return
		}
		built.output, built.err = exec.Command("bash", filepath.Join(dir, "build.sh")).CombinedOutput()
		built.kernel = filepath.Join(dir, "build", "vmlinuz")
		built.initrd = filepath.Join(dir, "build", "initrd.gz")
	})
	if built.err != nil {
		t.Fatalf("build test guest: %v\n%s", built.err, built.output)
	}
	built.mu.Lock()
	if !built.logged {
		built.logged = true
		t.Logf("%s", built.output)
	}
	built.mu.Unlock()
	return built.kernel, built.initrd
}

// scriptDir finds testdata/guest: next to this package's source, or in the
// working directory or one above it.
func scriptDir() (string, error) {
	var candidates []string
	if _, file, _, ok := runtime.Caller(0); ok {
		candidates = append(candidates, filepath.Join(filepath.Dir(file), "..", "..", "testdata", "guest"))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			candidates = append(candidates, filepath.Join(d, "testdata", "guest"))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, dir := range candidates {
		if _, err := os.Stat(filepath.Join(dir, "build.sh")); err == nil {
			return filepath.Clean(dir), nil
		}
	}
	return "", errors.New("guest: testdata/guest/build.sh not found next to the package source or above the working directory")
}
