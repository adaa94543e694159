package takeover

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/replica"
)

// The test binary doubles as a stand-in for QEMU: guest RAM in a shared
// memfd named as QEMU's memory-backend-memfd names it, read and written
// on command.
const lazyHelperEnv = "TAKEOVER_LAZY_HELPER"

const lazyHelperSize = 16 << 20 // 64 runs

func init() {
	if os.Getenv(lazyHelperEnv) != "" {
		runtime.LockOSThread()
		os.Exit(lazyHelperMain())
	}
}

// lazyHelperMain obeys "r P" (print the first 8 bytes of page P as a
// number), "w P" (add 1 to them) and "h" (print a hash of all of RAM).
func lazyHelperMain() int {
	fd, err := unix.MemfdCreate(dirtylog.MemfdBackendName, unix.MFD_CLOEXEC)
	if err == nil {
		err = unix.Ftruncate(fd, lazyHelperSize)
	}
	if err != nil {
		fmt.Println("memfd:", err)
		return 1
	}
	mem, err := unix.Mmap(fd, 0, lazyHelperSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		fmt.Println("mmap:", err)
		return 1
	}
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		p, _ := strconv.Atoi(arg)
		switch cmd {
		case "r":
			fmt.Println("v", binary.LittleEndian.Uint64(mem[p*pageSize:]))
		case "w":
			binary.LittleEndian.PutUint64(mem[p*pageSize:], binary.LittleEndian.Uint64(mem[p*pageSize:])+1)
			fmt.Println("ok")
		case "h":
			h := fnv.New64a()
			h.Write(mem)
			fmt.Println("h", h.Sum64())
		}
	}
	return 0
}

// lazyImage is the replica's RAM image the test loads: page p starts with
// p+1, except runs 10 to 19, which are zero.
func lazyImage() []byte {
	b := make([]byte, lazyHelperSize)
	for p := 0; p < lazyHelperSize/pageSize; p++ {
		if run := p * pageSize / lazyRun; run < 10 || run >= 20 {
			binary.LittleEndian.PutUint64(b[p*pageSize:], uint64(p+1))
		}
	}
	return b
}

// gatedImage serves reads of the image; a read at an offset in gates
// waits until the gate is closed (the first read there only, if once).
type gatedImage struct {
	img     []byte
	mu      sync.Mutex
	gates   map[int64]chan struct{}
	once    map[int64]bool
	waiting chan int64
	// opened and closed count the loader's readers.
	opened, closed int
}

func (g *gatedImage) open() (replica.ReaderAtCloser, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.opened++
	return g, nil
}

func (g *gatedImage) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed++
	return nil
}
func (g *gatedImage) ReadAt(p []byte, off int64) (int, error) {
	g.mu.Lock()
	gate, ok := g.gates[off]
	if ok && g.once[off] {
		delete(g.gates, off)
	}
	g.mu.Unlock()
	if ok {
		g.waiting <- off
		<-gate
	}
	return bytes.NewReader(g.img).ReadAt(p, off)
}

// recorder notes what each Copy put in.
type recorder struct {
	uffd
	copies chan [2]int64 // offset, bytes put in
}

func (r recorder) Copy(off uint64, data []byte) (int, error) {
	n, err := r.uffd.Copy(off, data)
	select {
	case r.copies <- [2]int64{int64(off), int64(n)}:
	default:
	}
	return n, err
}

type helper struct {
	t     *testing.T
	pid   int
	in    io.Writer
	lines chan string
}

func startLazyHelper(t *testing.T) *helper {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, pidfd_getfd)")
	}
	if err := dirtylog.MissingSupported(); err != nil {
		t.Skip(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lazyHelperEnv+"=1")
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	h := &helper{t: t, pid: cmd.Process.Pid, in: in, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	h.expect("", "ready")
	return h
}

// expect sends cmd (unless "") and checks the answer.
func (h *helper) expect(cmd, want string) {
	h.t.Helper()
	if cmd != "" {
		fmt.Fprintln(h.in, cmd)
	}
	select {
	case l := <-h.lines:
		if l != want {
			h.t.Fatalf("%q: helper said %q, want %q", cmd, l, want)
		}
	case <-time.After(30 * time.Second):
		h.t.Fatalf("%q: helper silent for 30 s", cmd)
	}
}

// TestLazyLoad: a process whose RAM is loaded lazily reads the replica's
// pages at first touch, zero runs as zeros; the background fill, hot
// runs first, brings every page in, and never overwrites a page a fault
// copied and the process wrote since (the fill's copy of that run, held
// back until then, puts nothing in: UFFDIO_COPY's EEXIST); at the end the
// RAM is the image, the process's one write aside.
func TestLazyLoad(t *testing.T) {
	h := startLazyHelper(t)
	img := lazyImage()
	const hotRun, lastRun = 40, 63
	hotGate, lastGate := make(chan struct{}), make(chan struct{})
	g := &gatedImage{img: img, waiting: make(chan int64, 8),
		gates: map[int64]chan struct{}{hotRun * lazyRun: hotGate, lastRun * lazyRun: lastGate},
		once:  map[int64]bool{hotRun * lazyRun: true}}
	m, err := dirtylog.RegisterMissing(h.pid, lazyHelperSize)
	if err != nil {
		t.Fatal(err)
	}
	rec := recorder{uffd: m, copies: make(chan [2]int64, 1024)}
	l := newLazyLoader(rec, lazySource{open: g.open, size: lazyHelperSize, hot: []int64{hotRun * lazyRun, 3 * lazyRun}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer l.stop()
	if err := l.run(); err != nil {
		t.Fatal(err)
	}
	// The fill starts with the hottest run, held back; the last run is
	// held back until the end, so the load cannot finish before.
	select {
	case off := <-g.waiting:
		if off != hotRun*lazyRun {
			t.Fatalf("the fill began at %d, want the hot run at %d", off, hotRun*lazyRun)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fill never read the hot run")
	}
	page := hotRun*lazyRun/pageSize + 5
	h.expect(fmt.Sprintf("w %d", page), "ok") // a fault brings the run in
	h.expect(fmt.Sprintf("r %d", page), fmt.Sprintf("v %d", page+2))
	h.expect("r 2", "v 3")
	h.expect(fmt.Sprintf("r %d", 12*lazyRun/pageSize), "v 0")
	close(hotGate)
	for deadline := time.After(10 * time.Second); ; {
		select {
		case c := <-rec.copies:
			if c[0] != hotRun*lazyRun || c[1] == lazyRun {
				continue // the fault's copy
			}
			if c[1] != 0 {
				t.Fatalf("the fill's copy of run %d, which a fault brought in, put in %d bytes", hotRun, c[1])
			}
		case off := <-g.waiting:
			if off != lastRun*lazyRun {
				t.Fatalf("read at %d held", off)
			}
			continue
		case <-deadline:
			t.Fatal("the fill's copy of the held run never came")
		}
		break
	}
	g.mu.Lock()
	delete(g.gates, lastRun*lazyRun)
	g.mu.Unlock()
	close(lastGate)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.wait(ctx); err != nil {
		t.Fatal(err)
	}
	// Every reader is closed by then: the caller closes the store next
	// (with RBD, the cluster connection under the images).
	g.mu.Lock()
	if g.opened == 0 || g.closed != g.opened {
		t.Errorf("wait returned with %d of the loader's %d readers closed", g.closed, g.opened)
	}
	g.mu.Unlock()
	binary.LittleEndian.PutUint64(img[page*pageSize:], uint64(page+2))
	sum := fnv.New64a()
	sum.Write(img)
	h.expect("h", fmt.Sprintf("h %d", sum.Sum64()))
	// The run written first came in on its fault; the others the fill
	// may have brought in before the helper touched them.
	if f, z := l.faulted.Load(), l.zeroed.Load(); f < 1 || z != 10 {
		t.Errorf("runs in on fault %d (want at least 1), zero runs %d (want 10)", f, z)
	}
	t.Logf("runs: %d on fault, %d filled, %d zero", l.faulted.Load(), l.filled.Load(), l.zeroed.Load())
}
