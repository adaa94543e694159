package dirtylog

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A process that waits for its child's exit (os/exec's Wait) takes the
// child's ptrace stops too, since they are reported to the tracer's whole
// thread group; ptrace on one's own child would then hang or end that
// Wait early. So when the tracked process is our child (QEMU started by a
// test), a re-executed copy of this binary makes the injection, and we
// take the userfaultfd from it with pidfd_getfd.
const registerEnv = "DRSYNC_DIRTYLOG_REGISTER"

func init() {
	if v, ok := os.LookupEnv(registerEnv); ok {
		os.Exit(registerMain(v))
	}
}

type registerRequest struct {
	PID     int
	Regions []Region
	Spec    uffdSpec
}

func registerMain(v string) int {
	var req registerRequest
	if err := json.Unmarshal([]byte(v), &req); err != nil {
		fmt.Println("error", err)
		return 1
	}
	f, err := injectUffd(req.PID, req.Regions, req.Spec)
	if err != nil {
		kind := "error"
		if errors.Is(err, ErrUnsupported) {
			kind = "unsupported"
		}
		fmt.Println(kind, err)
		return 1
	}
	fmt.Println("fd", f.Fd())
	io.Copy(io.Discard, os.Stdin) // until the parent has taken it
	return 0
}

func isChild(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(s[i+1:])
	return len(f) > 1 && f[1] == strconv.Itoa(os.Getpid())
}

// registerVia runs injectRegister in a re-executed copy of this binary.
func registerVia(pid int, regions []Region) (*os.File, error) {
	return registerViaSpec(pid, regions, wpSpec)
}

// registerViaSpec runs injectUffd in a re-executed copy of this binary.
func registerViaSpec(pid int, regions []Region, spec uffdSpec) (*os.File, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("re-execute for the injection: %w", err)
	}
	req, _ := json.Marshal(registerRequest{PID: pid, Regions: regions, Spec: spec})
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), registerEnv+"="+string(req))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("re-execute for the injection: %w", err)
	}
	defer func() {
		in.Close()
		cmd.Wait()
	}()
	line, _ := bufio.NewReader(out).ReadString('\n')
	kind, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	switch kind {
	case "fd":
	case "unsupported":
		return nil, fmt.Errorf("%w: %s", ErrUnsupported, rest)
	case "":
		return nil, errors.New("the injection helper ended without an answer")
	default:
		return nil, errors.New(rest)
	}
	fd, err := strconv.Atoi(rest)
	if err != nil {
		return nil, fmt.Errorf("injection helper: %q", line)
	}
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open helper: %w", err)
	}
	defer unix.Close(pidfd)
	local, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_getfd from the helper: %w", err)
	}
	return os.NewFile(uintptr(local), "userfaultfd"), nil
}
