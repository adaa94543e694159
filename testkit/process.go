package testkit

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	// mainRuns is set by Main: the test binary removes what Drsync built
	// when it ends.
	mainRuns bool
)

// Main runs a package's tests and then removes the drsync binary that
// Drsync built for them and stops the Ceph cluster CephCluster started. A package whose tests call Drsync (or Run, MustRun,
// Start) calls it from its TestMain:
//
//	func TestMain(m *testing.M) { testkit.Main(m) }
func Main(m *testing.M) {
	mainRuns = true
	code := m.Run()
	stopCeph()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// Drsync builds cmd/drsync once per test binary and returns its path.
func Drsync(t testing.TB) string {
	t.Helper()
	if !mainRuns {
		// Otherwise every run would leave the binary behind in the
		// temporary directory.
		t.Fatal("testkit.Drsync: the package's TestMain must call testkit.Main")
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "drsync-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(buildDir, "drsync"), "github.com/drsync/drsync/cmd/drsync").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build drsync: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "drsync")
}

// Run runs drsync to completion and returns its exit code and output.
func Run(t testing.TB, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(Drsync(t), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run drsync %v: %v", args, err)
	}
	return code, out.String()
}

// MustRun runs drsync and fails the test unless it exits 0.
func MustRun(t testing.TB, args ...string) string {
	t.Helper()
	code, out := Run(t, args...)
	if code != 0 {
		t.Fatalf("drsync %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// Proc is a drsync process running in the background; its output goes to
// a log file the test prints on failure.
type Proc struct {
	t    testing.TB
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// Start starts drsync in the background.
func Start(t testing.TB, logFile string, args ...string) *Proc {
	t.Helper()
	return StartWrapped(t, logFile, nil, args...)
}

// StartWrapped is Start with the command rewritten by wrap before it
// starts, e.g. to run it in a network namespace (wanemu's Wrap).
func StartWrapped(t testing.TB, logFile string, wrap func(*exec.Cmd) error, args ...string) *Proc {
	t.Helper()
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Drsync(t), args...)
	if wrap != nil {
		if err := wrap(cmd); err != nil {
			t.Fatal(err)
		}
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Proc{t: t, cmd: cmd, log: logFile, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() { p.Kill() })
	return p
}

// Signal sends sig.
func (p *Proc) Signal(sig syscall.Signal) { p.cmd.Process.Signal(sig) }

// Kill SIGKILLs the process and waits for it.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGCONT)
	p.cmd.Process.Kill()
	<-p.done
}

// Wait waits up to d for the process to exit and returns its exit code.
func (p *Proc) Wait(d time.Duration) (int, error) {
	select {
	case <-p.done:
		if ee, ok := p.err.(*exec.ExitError); ok {
			return ee.ExitCode(), nil
		}
		return 0, p.err
	case <-time.After(d):
		return -1, fmt.Errorf("still running after %v", d)
	}
}

// Log returns what the process printed so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// WaitLog waits up to d for substr to appear in the process's output.
func (p *Proc) WaitLog(substr string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(p.Log(), substr) {
			return true
		}
		select {
		case <-p.done:
			return strings.Contains(p.Log(), substr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return false
}

// FileHash is the xxhash64 of a file's first n bytes (all if n < 0), with
// a short file reading as if padded with zeros (as a sparse image does).
func FileHash(t testing.TB, path string, n int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := xxhash.New()
	var r io.Reader = f
	if n >= 0 {
		r = io.MultiReader(io.LimitReader(f, n), io.LimitReader(zeroReader{}, n))
		r = io.LimitReader(r, n)
	}
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%016x", h.Sum64())
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// SparseFile creates a sparse file of size bytes.
func SparseFile(t testing.TB, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// ScribbleFile writes n random runs of up to maxLen bytes (a fifth of them
// zeros) at random offsets of a file of size bytes, like a guest would,
// and returns how many bytes it wrote.
func ScribbleFile(t testing.TB, rng *rand.Rand, path string, size int64, n, maxLen int) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var total int64
	buf := make([]byte, maxLen)
	for range n {
		l := 1 + rng.IntN(maxLen)
		off := rng.Int64N(size - int64(l))
		b := buf[:l]
		if rng.IntN(5) == 0 {
			clear(b)
		} else {
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		total += int64(l)
	}
	return total
}

// Pid is the process's id, e.g. to read its /proc entries.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }
