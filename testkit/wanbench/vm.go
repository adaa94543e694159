package wanbench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/wanemu"
)

// vmConfig says how to start one QEMU with the test guest's command line.
type vmConfig struct {
	name   string           // for errors and logs: "source", "destination 1", ...
	em     *wanemu.Emulator // nil: the test process's own network namespace
	side   wanemu.Side
	memMiB int
	args   map[string]string
	disks  []guest.Disk
	extra  []string // QEMU arguments after all the others
}

// vm is a QEMU started by testdata/guest/launch.sh, so that it has the same
// machine as every other guest of the tests, possibly inside one side of
// the emulated link, which guest.Launch cannot do. Its serial console is
// collected line by line.
type vm struct {
	name    string
	qmpPath string
	q       *qmp.Session
	cmd     *exec.Cmd
	stderr  hosttools.SyncBuffer
	exited  chan struct{}
	exitErr error

	mu      sync.Mutex
	lines   []string
	changed chan struct{}
	eof     bool

	stopOnce sync.Once
}

// startVM starts QEMU and connects to its QMP socket. The QEMU is killed
// when the test ends at the latest, and when the test binary dies.
func startVM(ctx context.Context, t testing.TB, c vmConfig) (*vm, error) {
	kernel, initrd := guest.Build(t)
	// Build returns testdata/guest/build/{vmlinuz,initrd.gz}.
	launch := filepath.Join(filepath.Dir(filepath.Dir(kernel)), "launch.sh")
	if _, err := os.Stat(launch); err != nil {
		return nil, fmt.Errorf("%s: launch script: %w", c.name, err)
	}
	dir, err := os.MkdirTemp("", "wbvm")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	v := &vm{
		name:    c.name,
		qmpPath: filepath.Join(dir, "qmp"),
		exited:  make(chan struct{}),
		changed: make(chan struct{}),
	}
	mem := c.memMiB
	if mem <= 0 {
		mem = 256
	}
	args := []string{launch, "-m", strconv.Itoa(mem), "-q", v.qmpPath, "-s", "stdio", "-k", kernel, "-i", initrd}
	keys := make([]string, 0, len(c.args))
	for k := range c.args {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		args = append(args, "-a", k+"="+c.args[k])
	}
	for _, d := range c.disks {
		format := d.Format
		if format == "" {
			format = "raw"
		}
		args = append(args, format+":"+d.Path)
	}
	if len(c.disks) == 0 {
		// getopts in launch.sh takes the first "--" as the end of its
		// options; the second one ends the (empty) list of disks.
		args = append(args, "--")
	}
	args = append(append(args, "--"), c.extra...)

	cmd := exec.Command("bash", args...)
	if c.em != nil {
		if err := c.em.Wrap(c.side, cmd); err != nil {
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
	}
	// FORMAT in the environment would override the formats of all disks.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "FORMAT=") })
	cmd.Stderr = &v.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("%s: start QEMU: %w", c.name, err)
	}
	pw.Close()
	v.cmd = cmd
	serialDone := make(chan struct{})
	go func() {
		v.readSerial(pr)
		close(serialDone)
	}()
	go func() {
		v.exitErr = cmd.Wait()
		<-serialDone
		close(v.exited)
	}()
	t.Cleanup(func() {
		v.stop()
		if t.Failed() {
			t.Logf("%s: console (last lines):\n%s\nQEMU stderr:\n%s", v.name, v.tail(15), v.stderr.String())
		}
	})

	for deadline := time.Now().Add(30 * time.Second); ; {
		if conn, err := net.Dial("unix", v.qmpPath); err == nil {
			conn.Close()
			break
		}
		select {
		case <-v.exited:
			return v, fmt.Errorf("%s: QEMU exited before creating its QMP socket (%v): %s", c.name, v.exitErr, v.stderr.String())
		case <-ctx.Done():
			return v, fmt.Errorf("%s: waiting for the QMP socket: %w", c.name, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return v, fmt.Errorf("%s: no QMP socket at %s after 30 s: %s", c.name, v.qmpPath, v.stderr.String())
		}
	}
	if v.q, err = qmp.Dial(ctx, v.qmpPath, qmp.Options{}); err != nil {
		return v, fmt.Errorf("%s: %w", c.name, err)
	}
	return v, nil
}

func (v *vm) readSerial(f *os.File) {
	defer f.Close()
	var pending []byte
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		pending = append(pending, buf[:n]...)
		var texts []string
		for {
			i := slices.Index(pending, '\n')
			if i < 0 {
				break
			}
			texts = append(texts, strings.TrimRight(string(pending[:i]), "\r"))
			pending = pending[i+1:]
		}
		v.mu.Lock()
		v.lines = append(v.lines, texts...)
		if err != nil {
			v.eof = true
		}
		if len(texts) > 0 || err != nil {
			close(v.changed)
			v.changed = make(chan struct{})
		}
		v.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// waitLine waits for a console line (since boot) that match accepts.
func (v *vm) waitLine(ctx context.Context, what string, match func(string) bool) (string, error) {
	for i := 0; ; {
		v.mu.Lock()
		lines, changed, eof := v.lines, v.changed, v.eof
		v.mu.Unlock()
		for ; i < len(lines); i++ {
			if match(lines[i]) {
				return lines[i], nil
			}
		}
		if eof {
			return "", fmt.Errorf("%s: console ended before %s; last lines:\n%s", v.name, what, v.tail(10))
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return "", fmt.Errorf("%s: waiting for %s: %w; last lines:\n%s", v.name, what, ctx.Err(), v.tail(10))
		}
	}
}

// waitWorkload waits until the workload runs: its first pass over the
// cache device done, if it has one, and then n more ticks.
func (v *vm) waitWorkload(ctx context.Context, cache bool, n int) error {
	if cache {
		if _, err := v.waitLine(ctx, "the cache disk in the page cache (CACHED)", func(s string) bool {
			return strings.HasPrefix(s, "CACHED ")
		}); err != nil {
			return err
		}
	}
	v.mu.Lock()
	from := len(v.lines)
	v.mu.Unlock()
	seen := 0
	_, err := v.waitLine(ctx, fmt.Sprintf("%d ticks", n), func(s string) bool {
		if from > 0 {
			from--
			return false
		}
		if strings.HasPrefix(s, "TICK ") {
			seen++
		}
		return seen >= n
	})
	return err
}

// tail is the last n console lines.
func (v *vm) tail(n int) string {
	v.mu.Lock()
	lines := v.lines[max(0, len(v.lines)-n):]
	v.mu.Unlock()
	if len(lines) == 0 {
		return "  (no console output)"
	}
	return "  " + strings.Join(lines, "\n  ")
}

// exec runs a QMP command bounded by ctx and names the VM in its error.
func (v *vm) exec(ctx context.Context, cmd string, args, reply any) error {
	if err := v.q.Execute(ctx, cmd, args, reply); err != nil {
		return fmt.Errorf("%s: %w", v.name, err)
	}
	return nil
}

// stop quits QEMU through QMP, kills it if it does not go within 3 s, and
// waits until it has gone. It may be called more than once.
func (v *vm) stop() {
	v.stopOnce.Do(func() {
		if v.q != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := v.q.Execute(ctx, "quit", nil, nil)
			cancel()
			if err == nil || errors.Is(err, qmp.ErrDisconnected) {
				select {
				case <-v.exited:
				case <-time.After(3 * time.Second):
				}
			}
			v.q.Close()
		}
		if v.cmd != nil {
			v.cmd.Process.Kill() // an error means it had exited already
			<-v.exited
		}
	})
}
