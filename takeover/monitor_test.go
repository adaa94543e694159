package takeover_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/livecut/livecuttest"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/takeover"
	"github.com/drsync/drsync/testkit/hosttools"
)

// TestStartThroughMonitor drives Start's wait for the guest through a
// scripted QEMU: a process stands in for QEMU, a listener for its QMP
// socket, and the fake answers the monitor's commands.
func TestStartThroughMonitor(t *testing.T) {
	for _, tc := range []struct {
		name, status string
		faults       []livecuttest.Fault
		want         []string // the commands Start issues
		wantErr      error
		wantPaused   bool
	}{
		{name: "running", status: "running", want: []string{"query-status"}},
		{name: "paused at the cut", status: "paused", want: []string{"query-status", "cont", "  event RESUME"}, wantPaused: true},
		{name: "cont refused", status: "paused", faults: []livecuttest.Fault{{Cmd: "cont", Error: "Resetting the Virtual Machine is required"}},
			want: []string{"query-status", "cont", "  error: Resetting the Virtual Machine is required"}},
		{name: "load failed", status: "internal-error", want: []string{"query-status", "query-migrate"}, wantErr: takeover.ErrLoad},
		{name: "QEMU gone", status: "running", faults: []livecuttest.Fault{{Cmd: "query-status", Exit: "killed"}}, want: []string{"query-status"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := hosttools.ShortTempDir(t, "tk")
			f := livecuttest.New(t, nil)
			f.Status, f.Faults = tc.status, tc.faults
			p := &takeover.Plan{QMP: filepath.Join(dir, "qmp.sock"), Command: []string{"sleep", "60"},
				Dial: func(ctx context.Context, socket string) (takeover.Monitor, error) {
					return f.Dial(ctx, socket, qmp.Options{})
				}}
			stop := listenWhileStarting(t, p.QMP)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			vm, err := takeover.Start(ctx, p, nil)
			stop()
			if vm != nil {
				defer vm.Stop()
			}
			if got := f.Trace(); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			ok := tc.wantErr == nil && tc.faults == nil
			switch {
			case ok && err != nil:
				t.Fatalf("start: %v", err)
			case ok:
				if vm.Status != "running" || vm.WasPaused != tc.wantPaused {
					t.Errorf("status %q, was paused %v", vm.Status, vm.WasPaused)
				}
			case err == nil:
				t.Fatalf("start succeeded; want an error")
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("start: %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				t.Logf("start: %v", err)
			}
		})
	}
}

// listenWhileStarting keeps a listener at path until stop: Start removes
// a stale socket before it spawns QEMU, so the listener is put back
// whenever the path is gone.
func listenWhileStarting(t *testing.T, path string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ls []net.Listener
		defer func() {
			for _, l := range ls {
				l.Close()
			}
		}()
		for {
			if _, err := os.Stat(path); err != nil {
				if l, err := net.Listen("unix", path); err == nil {
					ls = append(ls, l)
					go func() {
						for {
							c, err := l.Accept()
							if err != nil {
								return
							}
							c.Close()
						}
					}()
				}
			}
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// TestStartReportsWhyQEMUExited: QEMU that refuses its configuration
// opens its QMP socket, then exits with the reason on stderr; the monitor
// fails as it goes. Start reports QEMU's words, not the monitor's reset.
func TestStartReportsWhyQEMUExited(t *testing.T) {
	dir := hosttools.ShortTempDir(t, "tk")
	const why = "qemu-system-x86_64: -blockdev driver=rbd,pool=rbd: Unknown driver 'rbd'"
	p := &takeover.Plan{QMP: filepath.Join(dir, "qmp.sock"), Command: []string{"sh", "-c", "sleep 0.2; echo \"" + why + "\" >&2; exit 1"},
		Dial: func(ctx context.Context, socket string) (takeover.Monitor, error) {
			return nil, errors.New("qmp: greeting: read: connection reset by peer")
		}}
	stop := listenWhileStarting(t, p.QMP)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vm, err := takeover.Start(ctx, p, nil)
	if vm != nil {
		vm.Stop()
	}
	if !errors.Is(err, takeover.ErrLoad) || !strings.Contains(err.Error(), "Unknown driver 'rbd'") {
		t.Fatalf("start: %v; want QEMU's reason for exiting and ErrLoad", err)
	}
}
