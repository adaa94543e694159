package guest

import (
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

	"github.com/drsync/drsync/testkit/hosttools"
)

// Disk is a disk image to attach. The first disk becomes /dev/vda, where the
// workload keeps its record ring, with QMP block node names file0 (the file)
// and disk0 (the format node); the next one file1 and disk1, and so on.
type Disk struct {
	Path   string
	Format string // "raw" or "qcow2"; "" picks by extension (.qcow2, .qcow: qcow2, else raw)
}

// Options describe a guest to launch.
type Options struct {
	MemMiB int // guest RAM, 256 if 0
	Disks  []Disk
	// Args are workload parameters, put on the kernel command line as
	// drsync.KEY=VALUE (a "drsync." prefix on KEY is optional): rate
	// (records/s, 20), dirty_mib (32), dirty_rate_kib (2048), read (0),
	// tick_ms (50), count_ms (10), cache (a device such as /dev/vdb to keep
	// in the page cache; none), and for guest-to-guest messages msg,
	// ip and peer (see MessageArgs and NIC).
	Args map[string]string
	// ExtraQEMUArgs go after all the others, e.g. "-S", "-incoming",
	// "defer", or a memory-backend-file object with -machine memory-backend.
	ExtraQEMUArgs []string
}

// Line is one serial console line, stamped with the host clock when its
// newline arrived.
type Line struct {
	Text string
	At   time.Time
}

// Tick is a parsed "TICK <counter> <seq>" line: the guest's RAM counter and
// the seq of the last record whose write had completed.
type Tick struct {
	Counter, Seq uint64
	At           time.Time
}

// VM is a running guest. Its methods are safe for concurrent use.
type VM struct {
	QMPSocket string    // QMP unix socket, ready when Launch returns
	Pid       int       // QEMU's process id
	Dir       string    // a short-named temporary directory, removed after the test
	Started   time.Time // just before QEMU was started

	cmd        *exec.Cmd
	stderr     hosttools.SyncBuffer
	exited     chan struct{} // closed when QEMU has exited
	exitErr    error         // set before exited closes
	serialDone chan struct{} // closed when the console reached EOF

	mu      sync.Mutex
	lines   []Line
	ticks   []Tick
	changed chan struct{} // closed and replaced when lines grow or the console ends
	eof     bool
}

// Launch boots the guest with testdata/guest/launch.sh (so tests and the
// manual script share one QEMU command line), with the serial console on a
// pipe that a goroutine reads. QEMU is killed when the test ends, or when
// the test binary dies. Launch returns once the QMP socket exists.
func Launch(t testing.TB, o Options) *VM {
	t.Helper()
	kernel, initrd := Build(t)
	script, err := scriptDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := hosttools.ShortTempDir(t, "gvm")
	vm := &VM{
		QMPSocket:  filepath.Join(dir, "qmp"),
		Dir:        dir,
		exited:     make(chan struct{}),
		serialDone: make(chan struct{}),
		changed:    make(chan struct{}),
	}
	mem := o.MemMiB
	if mem == 0 {
		mem = 256
	}
	args := []string{filepath.Join(script, "launch.sh"),
		"-m", strconv.Itoa(mem), "-q", vm.QMPSocket, "-s", "stdio", "-k", kernel, "-i", initrd}
	keys := make([]string, 0, len(o.Args))
	for k := range o.Args {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := o.Args[k]
		if k == "" || strings.ContainsAny(k, " \t\n\"=") || strings.ContainsAny(v, " \t\n\"") {
			t.Fatalf("guest: workload parameter %q=%q does not fit on a kernel command line", k, v)
		}
		args = append(args, "-a", k+"="+v)
	}
	for _, d := range o.Disks {
		format := d.Format
		if format == "" {
			format = "raw"
			if ext := filepath.Ext(d.Path); ext == ".qcow2" || ext == ".qcow" {
				format = "qcow2"
			}
		}
		switch format {
		case "raw", "qcow2":
			args = append(args, format+":"+d.Path)
		default:
			t.Fatalf("guest: disk %s: format %q (want raw, qcow2 or empty)", d.Path, d.Format)
		}
	}
	args = append(append(args, "--"), o.ExtraQEMUArgs...)

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", args...)
	// FORMAT in the environment would override the formats of all disks.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "FORMAT=") })
	cmd.Stdout = pw
	cmd.Stderr = &vm.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	vm.Started = time.Now()
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		t.Fatal(err)
	}
	pw.Close()
	vm.cmd = cmd
	vm.Pid = cmd.Process.Pid
	go vm.readSerial(pr)
	go func() {
		vm.exitErr = cmd.Wait()
		close(vm.exited)
	}()
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("guest console (last lines):\n%s\nlaunch/QEMU stderr:\n%s", vm.tail(40), vm.stderr.String())
		}
	})

	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		// The socket file exists from bind(); only a connection shows QEMU
		// listens on it.
		if c, err := net.Dial("unix", vm.QMPSocket); err == nil {
			c.Close()
			return vm
		}
		select {
		case <-vm.exited:
			t.Fatalf("guest: QEMU exited before creating its QMP socket: %v\n%s", vm.exitErr, vm.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest: QMP socket %s did not appear\n%s", vm.QMPSocket, vm.stderr.String())
		}
	}
}

func (vm *VM) readSerial(f *os.File) {
	defer close(vm.serialDone)
	defer f.Close()
	var pending []byte
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		now := time.Now()
		pending = append(pending, buf[:n]...)
		var texts []string
		for {
			i := slices.Index(pending, '\n')
			if i < 0 {
				break
			}
			texts = append(texts, string(pending[:i]))
			pending = pending[i+1:]
		}
		if err != nil && len(pending) > 0 {
			texts = append(texts, string(pending))
		}
		vm.mu.Lock()
		for _, s := range texts {
			vm.add(Line{Text: strings.Trim(s, "\r"), At: now})
		}
		if err != nil {
			vm.eof = true
		}
		if len(texts) > 0 || err != nil {
			close(vm.changed)
			vm.changed = make(chan struct{})
		}
		vm.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// add appends l and, for a TICK line, its Tick; vm.mu is held.
func (vm *VM) add(l Line) {
	vm.lines = append(vm.lines, l)
	if tk, ok := parseTick(l.Text); ok {
		tk.At = l.At
		vm.ticks = append(vm.ticks, tk)
	}
}

// Kill kills QEMU (SIGKILL) and waits until it and the console are gone.
// It may be called more than once.
func (vm *VM) Kill() {
	vm.cmd.Process.Kill() // an error means it had exited already
	<-vm.exited
	<-vm.serialDone
}

// Wait waits up to timeout for QEMU to exit by itself (after QMP "quit",
// say) and returns its exit error, nil for status 0.
func (vm *VM) Wait(timeout time.Duration) error {
	select {
	case <-vm.exited:
	case <-time.After(timeout):
		return fmt.Errorf("guest: QEMU (pid %d) still running after %v", vm.Pid, timeout)
	}
	select {
	case <-vm.serialDone:
	case <-time.After(5 * time.Second):
	}
	return vm.exitErr
}

// Stderr is what launch.sh and QEMU wrote to stderr so far.
func (vm *VM) Stderr() string { return vm.stderr.String() }

// Lines returns the console lines so far.
func (vm *VM) Lines() []Line {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return slices.Clone(vm.lines)
}

// Ticks returns the TICK lines so far, parsed.
func (vm *VM) Ticks() []Tick {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return slices.Clone(vm.ticks)
}

// WaitFor returns the first console line since boot, oldest first, that
// match accepts, waiting up to timeout for it. It fails early when the
// console ends (QEMU exited). match runs without locks held.
func (vm *VM) WaitFor(timeout time.Duration, match func(Line) bool) (Line, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := 0; ; {
		vm.mu.Lock()
		lines, changed, eof := vm.lines, vm.changed, vm.eof
		vm.mu.Unlock()
		for ; i < len(lines); i++ {
			if match(lines[i]) {
				return lines[i], nil
			}
		}
		if eof {
			return Line{}, fmt.Errorf("guest: console ended (%s) before a matching line; last lines:\n%s", vm.exitStatus(), vm.tail(10))
		}
		select {
		case <-changed:
		case <-deadline.C:
			return Line{}, fmt.Errorf("guest: no matching console line within %v; last lines:\n%s", timeout, vm.tail(10))
		}
	}
}

// WaitTicks waits up to timeout until at least n TICK lines arrived and
// returns all of them.
func (vm *VM) WaitTicks(n int, timeout time.Duration) ([]Tick, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		vm.mu.Lock()
		ticks, changed, eof := vm.ticks, vm.changed, vm.eof
		vm.mu.Unlock()
		if len(ticks) >= n {
			return slices.Clone(ticks), nil
		}
		if eof {
			return slices.Clone(ticks), fmt.Errorf("guest: console ended (%s) after %d of %d ticks; last lines:\n%s", vm.exitStatus(), len(ticks), n, vm.tail(10))
		}
		select {
		case <-changed:
		case <-deadline.C:
			return slices.Clone(ticks), fmt.Errorf("guest: %d of %d ticks within %v; last lines:\n%s", len(ticks), n, timeout, vm.tail(10))
		}
	}
}

// exitStatus describes how QEMU ended, for errors after the console ended.
func (vm *VM) exitStatus() string {
	select {
	case <-vm.exited:
	case <-time.After(2 * time.Second):
		return "QEMU still running"
	}
	if vm.exitErr == nil {
		return "QEMU exited with status 0"
	}
	return "QEMU: " + vm.exitErr.Error()
}

// tail is the last n console lines, one per line, with their host times.
func (vm *VM) tail(n int) string {
	vm.mu.Lock()
	lines := vm.lines[max(0, len(vm.lines)-n):]
	vm.mu.Unlock()
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "  %s %s\n", l.At.Format("15:04:05.000"), l.Text)
	}
	if b.Len() == 0 {
		return "  (no console output)\n"
	}
	return b.String()
}
