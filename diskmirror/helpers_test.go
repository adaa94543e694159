package diskmirror_test

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"

	"golang.org/x/sys/unix"
)

// privateTmp points TMPDIR at a short, test-owned directory, so that
// socket paths stay short and leftovers of OpenQcow2 can be checked.
func privateTmp(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dmt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("TMPDIR", dir)
	return dir
}

func checkNoLeftovers(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "drsync-qemu-nbd-") {
			t.Errorf("left behind in %s: %s", dir, e.Name())
		}
	}
}

// span is a piece of a test image layout.
type span struct {
	off, len int64
	kind     byte // 'd' random data, 'z' written zeros; anything unlisted is a hole
}

// writeLayout creates a sparse raw image of size bytes laid out as spans
// and returns its content.
func writeLayout(t *testing.T, path string, size int64, spans ...span) []byte {
	t.Helper()
	want := make([]byte, size)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(uint64(size), uint64(len(spans))))
	for _, s := range spans {
		b := want[s.off : s.off+s.len]
		if s.kind == 'd' {
			for i := range b {
				b[i] = byte(r.Uint32() | 1)
			}
		}
		if _, err := f.WriteAt(b, s.off); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

// holesSupported reports whether the file system under dir reports holes
// through SEEK_DATA.
func holesSupported(t *testing.T, dir string) bool {
	t.Helper()
	path := filepath.Join(dir, "probe")
	writeLayout(t, path, 1<<20, span{512 << 10, 4096, 'd'})
	defer os.Remove(path)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA)
	return err == nil && off == 512<<10
}

// baseLayout is the content most tests use: data, holes, written zeros,
// and an unaligned data run.
var baseLayout = []span{
	{0, 64 << 10, 'd'},
	{1 << 20, 100 << 10, 'd'},
	{2 << 20, 64 << 10, 'z'},
	{3<<20 + 4096, 12345, 'd'},
}

const baseSize = 4 << 20

type qcowSet struct {
	raw, qcow2, top string
	rawWant         []byte
	topWant         []byte // qemu-img convert's reading of top
}

// makeQcowSet builds a raw image, its qcow2 conversion, and a qcow2
// overlay on that with a few writes.
func makeQcowSet(t *testing.T) qcowSet {
	t.Helper()
	dir := t.TempDir()
	s := qcowSet{
		raw:   filepath.Join(dir, "base.raw"),
		qcow2: filepath.Join(dir, "base.qcow2"),
		top:   filepath.Join(dir, "top.qcow2"),
	}
	s.rawWant = writeLayout(t, s.raw, baseSize, baseLayout...)
	hosttools.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", s.raw, s.qcow2)
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", s.qcow2, "-F", "qcow2", s.top)
	hosttools.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 1056k 8k", "-c", "write -z 0 4k", "-c", "write -P 0x11 3M 64k", s.top)
	flat := filepath.Join(dir, "top.raw")
	hosttools.Run(t, "qemu-img", "convert", "-O", "raw", s.top, flat)
	var err error
	if s.topWant, err = os.ReadFile(flat); err != nil {
		t.Fatal(err)
	}
	return s
}

// holdWriteLock keeps image open for writing in qemu-io, as a running VM
// would, until the test ends.
func holdWriteLock(t *testing.T, image string) {
	t.Helper()
	// qemu-img info needs a shared lock, so it fails once qemu-io holds the
	// image. The probe itself briefly holds a shared lock, and a qemu-io
	// opening at that instant cannot get its write lock and exits; so a
	// qemu-io that exited is started again rather than waited for.
	start := func() (*exec.Cmd, chan struct{}) {
		cmd := exec.Command("qemu-io", "-f", "qcow2", "-c", "sleep 60000", image)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		return cmd, exited
	}
	cmd, exited := start()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-exited:
			cmd, exited = start()
			continue
		default:
		}
		if exec.Command("qemu-img", "info", image).Run() != nil {
			return
		}
	}
	t.Fatal("qemu-io did not lock the image")
}
