package diskmirror

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/drsync/drsync/nbd"
)

// Qcow2Options configures how OpenQcow2 runs qemu-nbd.
type Qcow2Options struct {
	// QemuNBD is the qemu-nbd binary; empty means "qemu-nbd" from PATH.
	QemuNBD string
	// Bitmaps are persistent dirty bitmaps in the image to export; read
	// them with (*NBDImage).DirtyExtents.
	Bitmaps []string
	// Cache is qemu-nbd's --cache mode. The default, "writeback", works on
	// every file system; "none" (O_DIRECT) keeps a full scan of a large
	// image out of the page cache where the file system supports it.
	Cache string
	// AIO is qemu-nbd's --aio mode; default "threads", which works with
	// any Cache mode ("native" needs Cache "none" or "directsync").
	AIO string
	// ForceShare reads an image another process holds open for writing,
	// bypassing QEMU's image locking. What is read may be inconsistent.
	ForceShare bool
	// StartTimeout bounds the wait for qemu-nbd to serve; default 10s.
	StartTimeout time.Duration
}

func (o *Qcow2Options) validate() error {
	if o.Cache == "" {
		o.Cache = "writeback"
	}
	if o.AIO == "" {
		o.AIO = "threads"
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 10 * time.Second
	}
	if !slices.Contains([]string{"none", "writeback", "writethrough", "directsync", "unsafe"}, o.Cache) {
		return fmt.Errorf("cache mode %q unknown", o.Cache)
	}
	if !slices.Contains([]string{"threads", "native", "io_uring"}, o.AIO) {
		return fmt.Errorf("aio mode %q unknown", o.AIO)
	}
	for _, b := range o.Bitmaps {
		// QEMU limits bitmap names to 1023 bytes.
		if b == "" || len(b) > 1023 || strings.ContainsAny(b, "\x00") {
			return fmt.Errorf("bitmap name %q invalid", b)
		}
	}
	return nil
}

// OpenQcow2 opens a qcow2 image, following its backing chain, by serving
// it read-only with a private qemu-nbd and reading that through NBD. The
// returned Image is an *NBDImage.
//
// ctx bounds the life of the qemu-nbd process, as with
// exec.CommandContext: cancelling it kills qemu-nbd and makes the image
// unusable. qemu-nbd is also killed if this process dies, and Close stops
// it and removes its temporary directory.
func OpenQcow2(ctx context.Context, path string, opts Qcow2Options) (Image, error) {
	img, err := openQcow2(ctx, path, opts)
	if err != nil {
		return nil, err // not a typed nil inside the interface
	}
	return img, nil
}

func openQcow2(ctx context.Context, path string, opts Qcow2Options) (*NBDImage, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("diskmirror: open qcow2 %s: %w", path, err)
	}
	// An absolute path also keeps qemu from reading a "json:" or
	// "protocol:" prefix into the name.
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("diskmirror: open qcow2 %s: %w", path, err)
	}
	format, err := DetectFormat(abs)
	if err != nil {
		return nil, fmt.Errorf("diskmirror: open qcow2: %w", err)
	}
	if format != FormatQcow2 {
		return nil, fmt.Errorf("diskmirror: open qcow2 %s: header says %s, not qcow2: %w", abs, format, ErrFormat)
	}
	bin := opts.QemuNBD
	if bin == "" {
		if bin, err = exec.LookPath("qemu-nbd"); err != nil {
			return nil, fmt.Errorf("diskmirror: open qcow2 %s: %w", abs, err)
		}
	}

	dir, err := os.MkdirTemp("", "drsync-qemu-nbd-") // mode 0700
	if err != nil {
		return nil, fmt.Errorf("diskmirror: open qcow2 %s: %w", abs, err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	if len(sock) >= len(syscall.RawSockaddrUnix{}.Path) {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("diskmirror: open qcow2 %s: socket path %s too long; set TMPDIR shorter", abs, sock)
	}
	args := []string{
		"--read-only",
		// One client, no --persistent: qemu-nbd exits when we disconnect.
		"--shared=1",
		"--cache=" + opts.Cache,
		"--aio=" + opts.AIO,
		"--socket=" + sock,
	}
	contexts := []string{nbd.ContextBaseAllocation}
	for _, b := range opts.Bitmaps {
		args = append(args, "--bitmap="+b)
		contexts = append(contexts, nbd.DirtyBitmapContext(b))
	}
	if opts.ForceShare {
		// qemu-nbd has no flag for this; it is a block-layer option.
		// QEMU's option syntax escapes a comma by doubling it.
		args = append(args, "--image-opts",
			"driver=qcow2,file.driver=file,file.filename="+strings.ReplaceAll(abs, ",", ",,")+",force-share=on")
	} else {
		args = append(args, "--format=qcow2", abs)
	}

	p, err := startQemuNBD(ctx, bin, args, dir)
	if err != nil {
		return nil, fmt.Errorf("diskmirror: open qcow2 %s: %w", abs, err)
	}
	// The process lives as long as ctx; only the start-up is bounded.
	sctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	c, err := p.serve(sctx, sock, contexts)
	if err != nil {
		p.kill()
		return nil, fmt.Errorf("diskmirror: open qcow2 %s: %w", abs, err)
	}
	return &NBDImage{c: c, name: abs, proc: p}, nil
}

// qemuNBD is a running qemu-nbd serving one image to us.
type qemuNBD struct {
	cmd       *exec.Cmd
	dir       string
	stderr    *capBuffer
	exited    chan struct{} // closed once reaped; waitErr is then set
	waitErr   error
	stopWatch func() bool

	stopOnce sync.Once
	stopErr  error
}

func startQemuNBD(ctx context.Context, bin string, args []string, dir string) (*qemuNBD, error) {
	cmd := exec.Command(bin, args...)
	// Kill qemu-nbd if we die without cleaning up. (Pdeathsig follows the
	// starting thread; Go only retires threads of goroutines that exit
	// while locked to them, which this package never does.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &qemuNBD{cmd: cmd, dir: dir, stderr: &capBuffer{max: 8 << 10}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start qemu-nbd: %w", err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	p.stopWatch = context.AfterFunc(ctx, func() { cmd.Process.Kill() })
	return p, nil
}

// serve connects to qemu-nbd once it listens on sock and negotiates.
func (p *qemuNBD) serve(ctx context.Context, sock string, contexts []string) (*nbd.Client, error) {
	conn, err := p.connect(ctx, sock)
	if err != nil {
		return nil, err
	}
	c, err := nbd.NewClient(ctx, conn, nbd.Options{MetaContexts: contexts})
	if err != nil {
		// qemu-nbd may listen before it opens the image, so a bad image can
		// also show up as a dropped handshake; its own message says more.
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-p.exited:
			return nil, &qemuNBDError{fmt.Sprintf("qemu-nbd exited before serving (%v)%s (%v)", p.waitErr, p.stderrSuffix(), err), err}
		case <-t.C:
		}
		return nil, fmt.Errorf("%w%s", err, p.stderrSuffix())
	}
	return c, nil
}

// connect waits for qemu-nbd to listen on sock. Probing is done by
// connecting, which is safe: until qemu-nbd listens, a connection is
// refused and does not count as its one client.
func (p *qemuNBD) connect(ctx context.Context, sock string) (net.Conn, error) {
	delay := 2 * time.Millisecond
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", sock)
		if err == nil {
			return conn, nil
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("connect to qemu-nbd: %w", err)
		}
		select {
		case <-p.exited:
			return nil, &qemuNBDError{msg: fmt.Sprintf("qemu-nbd exited before serving (%v)%s", p.waitErr, p.stderrSuffix())}
		case <-ctx.Done():
			return nil, &qemuNBDError{fmt.Sprintf("qemu-nbd did not serve on %s: %v%s", sock, ctx.Err(), p.stderrSuffix()), ctx.Err()}
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

func (p *qemuNBD) stderrSuffix() string {
	if s := strings.TrimSpace(p.stderr.String()); s != "" {
		return ": " + s
	}
	return ""
}

// stop waits briefly for qemu-nbd to exit on its own (it does once its
// client disconnects, after closing the image), then kills it, reaps it
// and removes its directory.
func (p *qemuNBD) stop() error { return p.shutdown(2 * time.Second) }

// kill stops qemu-nbd at once; for failed opens.
func (p *qemuNBD) kill() { p.shutdown(0) }

func (p *qemuNBD) shutdown(grace time.Duration) error {
	p.stopOnce.Do(func() {
		p.stopWatch()
		if grace > 0 {
			t := time.NewTimer(grace)
			select {
			case <-p.exited:
			case <-t.C:
			}
			t.Stop()
		}
		p.cmd.Process.Kill() // harmless once reaped
		<-p.exited
		p.stopErr = os.RemoveAll(p.dir)
	})
	return p.stopErr
}

// qemuNBDError describes qemu-nbd failing to serve; it matches ErrQemuNBD
// and unwraps to what we saw fail, if anything.
type qemuNBDError struct {
	msg   string
	cause error
}

func (e *qemuNBDError) Error() string        { return e.msg }
func (e *qemuNBDError) Is(target error) bool { return target == ErrQemuNBD }
func (e *qemuNBDError) Unwrap() error        { return e.cause }

// capBuffer keeps the first max bytes written to it: qemu-nbd's first
// lines say why it failed.
type capBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (c *capBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - len(c.b); room > 0 {
		c.b = append(c.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *capBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.b)
}
