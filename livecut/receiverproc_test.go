package livecut_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs"
)

// receiverRootEnv, set, makes the test binary a receiver process for a
// benchmark (receiverProc) instead of running tests: the sender's CPU
// time is then its own, as it is at a protected site, and the receiver's
// is measured apart.
const receiverRootEnv = "DRSYNC_BENCH_RECEIVER_ROOT"

func TestMain(m *testing.M) {
	if root := os.Getenv(receiverRootEnv); root != "" {
		if err := serveReceiver(root, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "receiver process:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serveReceiver serves a receiver for root on the unix socket root/sock
// until in ends. It writes "ready" once it listens, and answers each
// "cpu" line read from in with its CPU time so far in nanoseconds.
func serveReceiver(root string, in io.Reader, out io.Writer) error {
	rcv, err := receiver.New(receiver.Options{Root: root, FS: vfs.Default, AckBytes: 16 << 20, Now: time.Now,
		Authorize: func(receiver.Peer, string) error { return nil }})
	if err != nil {
		return err
	}
	l, err := net.Listen("unix", filepath.Join(root, "sock"))
	if err != nil {
		return err
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go rcv.Handle(context.Background(), receiver.Peer{Fingerprint: "sha256:aa"}, c)
		}
	}()
	fmt.Fprintln(out, "ready")
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if sc.Text() == "cpu" {
			fmt.Fprintln(out, int64(hosttools.SelfCPU()))
		}
	}
	return sc.Err()
}

// receiverProc is a receiver in a process of its own (this test binary,
// see TestMain) replicating into root.
type receiverProc struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	sock string
}

func startReceiver(b *testing.B, root string) *receiverProc {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), receiverRootEnv+"="+root)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &receiverProc{cmd: cmd, in: in, out: bufio.NewScanner(outp), sock: filepath.Join(root, "sock")}
	b.Cleanup(func() {
		in.Close() // ends it
		cmd.Wait()
	})
	if !p.out.Scan() || p.out.Text() != "ready" {
		b.Fatalf("receiver process did not start: %q, %v", p.out.Text(), p.out.Err())
	}
	return p
}

// dialer connects senders to the process.
func (p *receiverProc) dialer() sender.Dialer {
	return sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", p.sock)
	})
}

// cpu is the process's CPU time so far. (The benchmark's own, cpuTime,
// is RUSAGE_SELF, which does not count this child.)
func (p *receiverProc) cpu() (time.Duration, error) {
	if _, err := fmt.Fprintln(p.in, "cpu"); err != nil {
		return 0, err
	}
	if !p.out.Scan() {
		return 0, fmt.Errorf("receiver process: %v", p.out.Err())
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(p.out.Text()), 10, 64)
	return time.Duration(ns), err
}
