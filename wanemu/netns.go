package wanemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// NamePrefix starts the name of every namespace this package creates:
	// drw-<pid>-<n>-a and drw-<pid>-<n>-b, where pid is the creating
	// process.
	NamePrefix = "drw-"
	netnsDir   = "/var/run/netns"
	tunPath    = "/dev/net/tun"
)

// ErrUnsupported is wrapped by the errors of Check and Start that mean the
// machine or the process cannot run an emulator at all (no privileges, no
// TUN driver, no ip command), so that tests can skip.
var ErrUnsupported = errors.New("wanemu: unsupported here")

type unsupportedError struct{ msg string }

func (e *unsupportedError) Error() string        { return e.msg }
func (e *unsupportedError) Is(target error) bool { return target == ErrUnsupported }

func unsupported(format string, a ...any) error {
	return &unsupportedError{msg: fmt.Sprintf(format, a...)}
}

// Check reports whether Start can work here: the process needs
// CAP_NET_ADMIN and CAP_SYS_ADMIN (root), the TUN driver and the ip
// command of iproute2. Its errors wrap ErrUnsupported.
func Check() error {
	_, err := checkPrereqs()
	return err
}

// checkPrereqs returns the path of the ip command.
func checkPrereqs() (string, error) {
	if err := checkCaps(); err != nil {
		return "", err
	}
	if _, err := os.Stat(tunPath); err != nil {
		return "", unsupported("wanemu: no %s, so no TUN devices (is the tun module loaded?): %v", tunPath, err)
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		return "", unsupported("wanemu: the ip command (iproute2) is needed to create namespaces: %v", err)
	}
	return ip, nil
}

// checkCaps reads the effective capabilities of the process.
func checkCaps() error {
	const capNetAdmin, capSysAdmin = 12, 21
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return unsupported("wanemu: needs root (CAP_NET_ADMIN) to create namespaces: cannot read capabilities: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		hex, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			break
		}
		var missing []string
		if caps&(1<<capNetAdmin) == 0 {
			missing = append(missing, "CAP_NET_ADMIN")
		}
		if caps&(1<<capSysAdmin) == 0 {
			missing = append(missing, "CAP_SYS_ADMIN")
		}
		if len(missing) > 0 {
			return unsupported("wanemu: needs root (CAP_NET_ADMIN) to create namespaces: uid %d lacks %s", os.Geteuid(), strings.Join(missing, " and "))
		}
		return nil
	}
	return unsupported("wanemu: needs root (CAP_NET_ADMIN) to create namespaces: no CapEff line in /proc/self/status")
}

// runIP runs the ip command and returns its error with its output.
func runIP(ctx context.Context, ip string, stdin string, args ...string) error {
	cmd := exec.CommandContext(ctx, ip, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if strings.Contains(msg, "Operation not permitted") || strings.Contains(msg, "Permission denied") {
			return unsupported("wanemu: needs root (CAP_NET_ADMIN) to create namespaces: ip %s: %s", strings.Join(args, " "), msg)
		}
		return fmt.Errorf("wanemu: ip %s: %v: %s", strings.Join(args, " "), err, msg)
	}
	return nil
}

// teardownCtx bounds the commands that clean up, which must run even when
// the caller's context is done.
func teardownCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// addNetns creates a named network namespace.
func addNetns(ctx context.Context, ip, name string) error {
	return runIP(ctx, ip, "", "netns", "add", name)
}

// delNetns removes a named network namespace. The namespace itself lives
// on while a process or a socket still uses it.
func delNetns(ip, name string) error {
	ctx, cancel := teardownCtx()
	defer cancel()
	return runIP(ctx, ip, "", "netns", "delete", name)
}

// netnsExists reports whether the named namespace is still mounted.
func netnsExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// ownedPID parses the creating pid out of a namespace name made by this
// package.
func ownedPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, NamePrefix)
	if !ok {
		return 0, false
	}
	pid, _, _ := strings.Cut(rest, "-")
	n, err := strconv.Atoi(pid)
	return n, err == nil && n > 0
}

// removeStale deletes the namespaces of this package whose creating process
// is gone. A recycled pid keeps its namespaces until the next run after it
// dies; nothing else can tell them apart.
func removeStale(ip string) {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, ok := ownedPID(e.Name())
		if !ok || pid == self {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			delNetns(ip, e.Name()) // best effort; a racing process may win
		}
	}
}

// ownNamespaces lists the namespaces of this package made by this process.
func ownNamespaces() []string {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		if pid, ok := ownedPID(e.Name()); ok && pid == os.Getpid() {
			names = append(names, e.Name())
		}
	}
	return names
}

// reaper is a shell in its own process group that deletes namespaces when
// this process dies without doing so: it waits for end of file on a pipe
// only this process holds open. Stop tells it "ok" instead when it has
// cleaned up itself.
type reaper struct {
	cmd *exec.Cmd
	w   *os.File
}

func startReaper(ip string, names ...string) (*reaper, error) {
	var script strings.Builder
	script.WriteString(`trap '' HUP INT TERM QUIT PIPE; read -r line; [ "$line" = ok ] && exit 0;`)
	for _, n := range names {
		fmt.Fprintf(&script, " %s netns delete %s >/dev/null 2>&1;", shellQuote(ip), shellQuote(n))
	}
	script.WriteString(" exit 0")
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("wanemu: reaper pipe: %w", err)
	}
	cmd := exec.Command("/bin/sh", "-c", script.String())
	cmd.Stdin = r
	// Its own process group: a ^C to the test must not kill it before it
	// has cleaned up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("wanemu: start clean-up process: %w", err)
	}
	return &reaper{cmd: cmd, w: w}, nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// finish releases the reaper; clean says whether the namespaces are
// already gone, else it deletes them.
func (r *reaper) finish(clean bool) {
	if clean {
		r.w.WriteString("ok\n")
	}
	r.w.Close()
	r.cmd.Wait()
}

// inNetns runs fn on an OS thread that has entered the network namespace
// at path, then returns the thread to its own namespace. Sockets and TUN
// devices created by fn belong to that namespace for their whole life,
// whichever thread uses them afterwards. If the thread cannot go back, it
// is not reused: its goroutine ends locked, which ends the thread.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("wanemu: open own network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("wanemu: open network namespace: %w", err)
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("wanemu: enter network namespace %s: %w", path, err)
			return
		}
		fnErr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("wanemu: leave network namespace %s: %w", path, err)
			return // still locked: the runtime ends this thread
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// openTUN creates a TUN device (IP packets, no packet information header)
// named dev in the network namespace at nsPath. The returned file is
// non-blocking, so the runtime poller serves it and Close interrupts a
// Read.
func openTUN(nsPath, dev string) (*os.File, error) {
	var f *os.File
	err := inNetns(nsPath, func() error {
		// The device is created in the namespace of the thread that opens
		// the clone device, so the open must happen in here.
		fd, err := unix.Open(tunPath, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
				return unsupported("wanemu: no TUN driver behind %s: %v", tunPath, err)
			}
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
				return unsupported("wanemu: needs root (CAP_NET_ADMIN) to open %s: %v", tunPath, err)
			}
			return fmt.Errorf("wanemu: open %s: %w", tunPath, err)
		}
		ifr, err := unix.NewIfreq(dev)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("wanemu: create TUN device %s: %w", dev, err)
		}
		f = os.NewFile(uintptr(fd), tunPath+":"+dev)
		return nil
	})
	return f, err
}
