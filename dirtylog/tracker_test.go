package dirtylog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the tracked process (a memfd mapped shared,
// like QEMU's guest RAM) and as a tracker that is killed.
const helperEnv = "DIRTYLOG_TEST_HELPER"

const helperPages = 64

func init() {
	// The main goroutine stays on the main thread (tid == pid), the one
	// Track stops, so the helper's raw syscalls are the ones interrupted.
	if os.Getenv(helperEnv) != "" {
		runtime.LockOSThread()
	}
}

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "target":
		os.Exit(targetMain())
	case "tracker":
		os.Exit(trackerMain())
	}
	os.Exit(m.Run())
}

// targetMain maps a memfd shared and obeys one command a line on stdin,
// read with a raw read(2) so the thread sits in it:
// "w N" increments a byte of page N, "r N" prints it, "s MS" sleeps in
// nanosleep(2).
func targetMain() int {
	fd, err := unix.MemfdCreate("dirtylog-test", unix.MFD_CLOEXEC)
	if err != nil {
		fmt.Println("memfd:", err)
		return 1
	}
	if err := unix.Ftruncate(fd, helperPages*pageSize); err != nil {
		fmt.Println("ftruncate:", err)
		return 1
	}
	mem, err := unix.Mmap(fd, 0, helperPages*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		fmt.Println("mmap:", err)
		return 1
	}
	fmt.Printf("ready %d\n", os.Getpid())
	var line []byte
	buf := make([]byte, 1)
	for {
		n, err := unix.Read(0, buf)
		if err != nil {
			fmt.Println("read:", err) // an EINTR here is a syscall not restarted
			return 1
		}
		if n == 0 {
			return 0
		}
		if buf[0] != '\n' {
			line = append(line, buf[0])
			continue
		}
		cmd, arg, _ := strings.Cut(string(line), " ")
		line = line[:0]
		v, _ := strconv.Atoi(arg)
		switch cmd {
		case "w":
			mem[v*pageSize+v%pageSize]++
			fmt.Println("ok")
		case "r":
			fmt.Println("v", mem[v*pageSize+v%pageSize])
		case "s":
			ts := unix.NsecToTimespec(int64(v) * 1e6)
			for {
				err := unix.Nanosleep(&ts, &ts)
				if err == nil {
					break
				}
				if err != unix.EINTR {
					fmt.Println("nanosleep:", err)
					return 1
				}
				fmt.Println("nanosleep: EINTR") // not restarted
				return 1
			}
			fmt.Println("slept")
		}
	}
}

type target struct {
	t     *testing.T
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Reader
	pid   int
	ram   []Region
	lines chan string
}

func startTarget(t *testing.T) *target {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=target")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tg := &target{t: t, cmd: cmd, in: in, out: bufio.NewReader(out), pid: cmd.Process.Pid, lines: make(chan string, 16)}
	t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	go func() {
		for {
			l, err := tg.out.ReadString('\n')
			if err != nil {
				close(tg.lines)
				return
			}
			tg.lines <- strings.TrimSpace(l)
		}
	}()
	if l := tg.next(); !strings.HasPrefix(l, "ready") {
		t.Fatalf("helper: %q", l)
	}
	maps, err := readMaps(tg.pid)
	if err != nil {
		t.Fatal(err)
	}
	if tg.ram, err = MemfdRAM(maps, "dirtylog-test", helperPages*pageSize); err != nil {
		t.Fatal(err)
	}
	return tg
}

func (tg *target) next() string {
	tg.t.Helper()
	select {
	case l, ok := <-tg.lines:
		if !ok {
			tg.t.Fatal("helper ended")
		}
		return l
	case <-time.After(30 * time.Second):
		tg.t.Fatal("helper silent for 30 s")
	}
	return ""
}

func (tg *target) do(cmd, want string) {
	tg.t.Helper()
	if _, err := fmt.Fprintln(tg.in, cmd); err != nil {
		tg.t.Fatal(err)
	}
	if l := tg.next(); l != want {
		tg.t.Fatalf("%s: helper said %q, want %q", cmd, l, want)
	}
}

// needKernel skips when tracking cannot work here, saying why.
func needKernel(t *testing.T, err error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, pidfd_getfd)")
	}
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("kernel lacks userfaultfd write-protect-async or PAGEMAP_SCAN (Linux 6.7+): %v", err)
	}
}

func pagesOf(rs []Range) []int {
	var out []int
	for _, r := range rs {
		for a := r.Start; a < r.End; a += pageSize {
			out = append(out, int(a/pageSize))
		}
	}
	return out
}

// TestTrackReportsWrittenPages: the first scan reports every page, each
// later one exactly the pages written since the one before; the helper's
// read(2), in which it was stopped, goes on without an error.
func TestTrackReportsWrittenPages(t *testing.T) {
	tg := startTarget(t)
	tr, err := Track(tg.pid, tg.ram)
	needKernel(t, err)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if fds := uffdFDs(t, tg.pid); fds != 0 {
		t.Fatalf("the helper still holds %d userfaultfds", fds)
	}
	for i, step := range []struct {
		write []int
		want  int // pages; -1 for all
	}{
		{nil, -1},
		{[]int{5, 6, 9, 10, 11}, 5},
		{[]int{20, 21, 20}, 2},
		{nil, 0},
		{[]int{0, 63}, 2},
	} {
		for _, p := range step.write {
			tg.do(fmt.Sprintf("w %d", p), "ok")
		}
		got, err := tr.Scan()
		if err != nil {
			t.Fatal(err)
		}
		pages := pagesOf(got)
		t.Logf("scan %d after writing %v: pages %v", i, step.write, shorten(pages))
		if step.want == -1 {
			if len(pages) != helperPages {
				t.Fatalf("first scan: %d pages, want all %d", len(pages), helperPages)
			}
			continue
		}
		want := map[int]bool{}
		for _, p := range step.write {
			want[p] = true
		}
		if len(pages) != len(want) {
			t.Fatalf("scan %d: pages %v, want %v", i, pages, step.write)
		}
		for _, p := range pages {
			if !want[p] {
				t.Fatalf("scan %d: pages %v, want %v", i, pages, step.write)
			}
		}
	}
}

func shorten(p []int) string {
	if len(p) > 8 {
		return fmt.Sprintf("%v ... (%d)", p[:8], len(p))
	}
	return fmt.Sprint(p)
}

// TestTrackRestartsBlockedSyscall: a thread stopped in a syscall the
// kernel restarts (read: -ERESTARTSYS; nanosleep: restart_syscall) finishes
// it as if nothing had happened.
func TestTrackRestartsBlockedSyscall(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  string
		want string
	}{
		{"read", "", ""},
		{"nanosleep", "s 1500", "slept"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := startTarget(t)
			if tc.cmd != "" {
				if _, err := fmt.Fprintln(tg.in, tc.cmd); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(300 * time.Millisecond) // the thread is in its syscall
			tr, err := Track(tg.pid, tg.ram)
			needKernel(t, err)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			if tc.want != "" {
				if l := tg.next(); l != tc.want {
					t.Fatalf("helper said %q, want %q", l, tc.want)
				}
			}
			tg.do("w 3", "ok")
		})
	}
}

// uffdFDs counts the userfaultfds pid holds.
func uffdFDs(t *testing.T, pid int) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, _ := os.Readlink(dir + "/" + e.Name()); strings.Contains(l, "userfaultfd") {
			n++
		}
	}
	return n
}

// trackerMain tracks the pid in argv, arms the protection and waits to be
// killed.
func trackerMain() int {
	pid, _ := strconv.Atoi(os.Getenv("DIRTYLOG_TEST_PID"))
	maps, err := readMaps(pid)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	ram, err := MemfdRAM(maps, "dirtylog-test", 0)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	tr, err := Track(pid, ram)
	if err != nil {
		fmt.Println("track:", err)
		return 1
	}
	if _, err := tr.Scan(); err != nil {
		fmt.Println("scan:", err)
		return 1
	}
	fmt.Println("armed")
	select {}
}

// protection reports whether pid's mapping at start has the userfaultfd
// write-protect flag (smaps VmFlags "uw") and how many of its pages are
// write-protected (pagemap bit 57).
func protection(t *testing.T, pid int, r Region) (registered bool, protected int) {
	t.Helper()
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, l := range strings.Split(string(smaps), "\n") {
		if m, err := parseMapsLine(l); err == nil && strings.Contains(l, "-") && !strings.Contains(l, ":  ") {
			in = m.Start == r.Start
			continue
		}
		if in && strings.HasPrefix(l, "VmFlags:") {
			registered = strings.Contains(l+" ", " uw ")
		}
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := (r.End - r.Start) / pageSize
	buf := make([]byte, n*8)
	if _, err := f.ReadAt(buf, int64(r.Start/pageSize*8)); err != nil {
		t.Fatal(err)
	}
	for i := uint64(0); i < n; i++ {
		if buf[i*8+7]&(1<<(57-56)) != 0 {
			protected++
		}
	}
	return registered, protected
}

// TestKilledTrackerLeavesNoProtection: the userfaultfd lives only in the
// tracker, so when the tracker is SIGKILLed the kernel un-registers the
// range and removes every write-protection; the tracked process writes on.
func TestKilledTrackerLeavesNoProtection(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, pidfd_getfd)")
	}
	tg := startTarget(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=tracker", fmt.Sprintf("DIRTYLOG_TEST_PID=%d", tg.pid))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	l, _ := bufio.NewReader(out).ReadString('\n')
	if strings.Contains(l, "not supported") {
		t.Skipf("tracker: %s", l)
	}
	if strings.TrimSpace(l) != "armed" {
		t.Fatalf("tracker said %q", l)
	}
	reg, prot := protection(t, tg.pid, tg.ram[0])
	t.Logf("tracked: registered %v, %d of %d pages write-protected", reg, prot, helperPages)
	if !reg || prot == 0 {
		t.Fatalf("tracking is not visible (registered %v, %d protected): the check below could not fail", reg, prot)
	}
	tg.do("w 7", "ok")
	cmd.Process.Kill()
	cmd.Wait()
	reg, prot = protection(t, tg.pid, tg.ram[0])
	t.Logf("tracker killed: registered %v, %d pages write-protected", reg, prot)
	if reg || prot != 0 {
		t.Fatalf("after the tracker died: registered %v, %d pages still write-protected", reg, prot)
	}
	if n := uffdFDs(t, tg.pid); n != 0 {
		t.Fatalf("the helper holds %d userfaultfds", n)
	}
	tg.do("w 8", "ok")
}
