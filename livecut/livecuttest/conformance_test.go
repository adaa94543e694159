package livecuttest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/livecut/livecuttest"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit/hosttools"
)

func TestFakeMonitor(t *testing.T) {
	livecuttest.TestMonitor(t, func(t *testing.T) livecuttest.Target {
		f := livecuttest.New(t, map[string]int64{"disk0": 1 << 20})
		f.T = nil // the suite sends an unknown command on purpose
		m, err := f.Dial(context.Background(), "fake.sock", qmp.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return livecuttest.Target{Monitor: m, Kill: func() { f.Exit("killed") }}
	})
}

// TestQMPMonitor runs the suite against a real QEMU with no guest to boot:
// no disks, no firmware run (-S), 32 MiB.
func TestQMPMonitor(t *testing.T) {
	hosttools.Need(t, "qemu-system-x86_64")
	livecuttest.TestMonitor(t, func(t *testing.T) livecuttest.Target {
		dir := hosttools.ShortTempDir(t, "mon")
		sock := filepath.Join(dir, "qmp.sock")
		cmd := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", "32", "-display", "none", "-nodefaults",
			"-qmp", "unix:"+sock+",server=on,wait=off")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for {
			m, err := livecut.DialQMP(ctx, sock, qmp.Options{})
			if err == nil {
				t.Cleanup(func() { m.Close() })
				return livecuttest.Target{Monitor: m, Kill: func() { cmd.Process.Kill() }}
			}
			if !errors.Is(err, qmp.ErrNoSocket) || ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}
