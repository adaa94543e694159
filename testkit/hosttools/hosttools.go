// Package hosttools helps tests that drive programs installed on the host
// (qemu-img, qemu-nbd, qemu-io) or run subcommands concurrently. It imports
// nothing of drsync's, so tests of any package, low-level ones included,
// can use it.
package hosttools

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Need skips the test unless every tool is on PATH.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make test installs qemu-utils); skipping", tool)
		}
	}
}

// Run runs a tool and fails the test unless it succeeds; it returns the
// combined output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ShortTempDir is a temporary directory with a short path, removed after
// the test: unix socket paths must stay under 108 bytes, which t.TempDir's
// long names can exceed.
func ShortTempDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// SyncBuffer is a bytes.Buffer safe for a writer in another goroutine.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// StartProcess starts cmd, which dies with the test binary even if cleanup
// never runs, and kills it when the test ends. The channel closes when it
// has exited.
func StartProcess(t testing.TB, cmd *exec.Cmd) <-chan struct{} {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	return exited
}

// WaitSocket waits until the unix socket at path accepts a connection and
// fails the test if the process serving it exits first or timeout passes;
// output says what the process printed.
func WaitSocket(t testing.TB, path string, exited <-chan struct{}, timeout time.Duration, output func() string) {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; {
		select {
		case <-exited:
			t.Fatalf("the process serving %s exited: %s", path, output())
		default:
		}
		if conn, err := net.Dial("unix", path); err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("socket %s did not appear within %v: %s", path, timeout, output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ServeQemuNBD exports image with qemu-nbd on a fresh unix socket until the
// test ends and returns the socket path; args go before the image name.
func ServeQemuNBD(t testing.TB, image string, args ...string) string {
	t.Helper()
	sock := filepath.Join(ShortTempDir(t, "qnbd"), "s")
	all := append([]string{"--persistent", "--shared=8", "--socket=" + sock}, args...)
	cmd := exec.Command("qemu-nbd", append(all, image)...)
	var stderr SyncBuffer
	cmd.Stderr = &stderr
	exited := StartProcess(t, cmd)
	WaitSocket(t, sock, exited, 10*time.Second, stderr.String)
	return sock
}

// StatCPU reads a /proc stat file (/proc/PID/stat or
// /proc/PID/task/TID/stat): the command name and the user plus system
// time used so far, at the clock tick's resolution.
func StatCPU(path string) (comm string, cpu time.Duration, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", 0, err
	}
	s := string(data)
	// The command may hold spaces and parentheses; the fields after its
	// last ')' are fixed.
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", 0, fmt.Errorf("%s: no command name", path)
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 13 { // state is field 3; utime, stime are 14 and 15
		return "", 0, fmt.Errorf("%s: %d fields", path, len(f)+2)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return "", 0, fmt.Errorf("%s: utime %q stime %q", path, f[11], f[12])
	}
	return s[open+1 : end], ticks(u + st), nil
}

// ticks converts a count of /proc clock ticks (USER_HZ, fixed at 100 on
// Linux/x86) to a duration.
func ticks(n int64) time.Duration { return time.Duration(n) * time.Second / 100 }

// IdleCPU is the time all CPUs of the machine have spent idle or waiting
// for IO since boot, from /proc/stat.
func IdleCPU() (time.Duration, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	// "cpu  user nice system idle iowait ...", in clock ticks.
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var idle time.Duration
	for _, v := range f[4:6] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		idle += ticks(n)
	}
	return idle, nil
}

// SelfCPU is the user plus system time this process has used.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(fmt.Sprintf("getrusage: %v", err)) // only for a bad argument
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
