package hosttools

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// LibvirtURI is the libvirt connection the tests use.
const LibvirtURI = "qemu:///system"

// usersLock is held shared by every test process that uses the libvirtd
// of scripts/libvirtd.sh; the last one to leave stops it. Test binaries of
// several packages run at once, so one must not stop libvirtd under another.
const usersLock = "/run/drsync-libvirtd.users"

// Libvirtd makes qemu:///system answer for the rest of the test: it runs
// scripts/libvirtd.sh start (which does nothing if a libvirtd already
// answers) and, when the test ends and no other test process still uses
// it, scripts/libvirtd.sh stop (which stops only a libvirtd it started).
// It skips the test where libvirt is not installed.
func Libvirtd(t testing.TB) {
	t.Helper()
	Need(t, "libvirtd", "virsh", "unshare")
	script, err := repoFile("scripts/libvirtd.sh")
	if err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(usersLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatalf("libvirtd users lock: %v", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_SH); err != nil {
		lock.Close()
		t.Fatalf("libvirtd users lock: %v", err)
	}
	t.Cleanup(func() {
		// Exclusive only if no other test process holds it shared.
		if syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			if out, err := exec.Command(script, "stop").CombinedOutput(); err != nil {
				t.Errorf("%s stop: %v\n%s", script, err, out)
			}
		}
		lock.Close()
	})
	if out, err := exec.Command(script, "start").CombinedOutput(); err != nil {
		t.Fatalf("%s start: %v\n%s", script, err, out)
	}
}

// Virsh runs virsh on LibvirtURI and fails the test unless it succeeds.
func Virsh(t testing.TB, args ...string) string {
	t.Helper()
	return Run(t, "virsh", append([]string{"-c", LibvirtURI}, args...)...)
}

// repoFile finds rel in the repository holding the working directory
// (tests run in their package's directory).
func repoFile(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, rel), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
