package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/drsync/drsync/vfs"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/drsync/drsync/internal/jsonfile"
	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/livecut"
)

// The guest guard: a live VM's cut stops the guest between the end of
// QEMU's migration and the sender's cont. A sender that dies in that gap
// (SIGKILL, OOM, crash) would leave the protected guest paused until a
// sender runs again. The sender therefore starts a guard process
// (StartGuard; drsync starts itself again as a hidden subcommand) that
// outlives it: the guard (RunGuard) reads its
// configuration from a pipe whose write end only the sender holds, and
// when that pipe reaches EOF (the sender is gone, however it ended) it
// resumes every guest a cut in flight left stopped (livecut.Guard), over
// the QMP socket the dead sender freed.

// guardConfig travels to the guard on its stdin.
type guardConfig struct {
	VMs []GuardVM `json:"vms"`
}

// GuardVM is a live VM the guard watches: its QMP socket, the live work
// directory where a cut in flight leaves its marker, and the state
// directory where the guard records what it did.
type GuardVM struct {
	Name     string `json:"name"`
	QMP      string `json:"qmp"`
	WorkDir  string `json:"work_dir"`
	StateDir string `json:"state_dir"`
}

// StartGuard starts the guard for vms, the command argv (a program that
// calls RunGuard with its stdin), and returns the pipe's write end, which
// the sender keeps open (and never writes again) until it exits.
func StartGuard(argv []string, vms []GuardVM, log *slog.Logger) (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start the guest guard: %w", err)
	}
	exe := argv[0]
	cmd := exec.Command(exe, argv[1:]...)
	cmd.Stdin = r
	// Its logs go where the sender's go (the journal, a log file).
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// Its own process group: a terminal's Ctrl-C or a signal to the
	// sender's group does not reach it. It must outlive the sender, so
	// no parent-death signal either.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("start the guest guard %s: %w", exe, err)
	}
	r.Close()
	b, _ := json.Marshal(guardConfig{VMs: vms})
	if _, err := w.Write(append(b, '\n')); err != nil {
		w.Close()
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("start the guest guard: %w", err)
	}
	go func() {
		// Reaps it; it exits early only if it failed.
		if err := cmd.Wait(); err != nil {
			log.Error("the guest guard exited: a sender killed during a cut would leave the guest paused until the next sender starts", "err", err)
		}
	}()
	return w, nil
}

// ErrGuardFailed is a guard run that may have left a guest paused.
var ErrGuardFailed = errors.New("the guest guard may have left a guest paused")

// RunGuard is the guard process: it reads its configuration from stdin,
// waits for EOF there (the sender is gone), then resumes every guest a cut
// in flight left stopped and records what it did.
func RunGuard(stdin io.Reader, log *slog.Logger, now func() time.Time) error {
	var cfg guardConfig
	dec := json.NewDecoder(stdin)
	if err := dec.Decode(&cfg); err != nil {
		log.Error("guard: no configuration from the sender", "err", err)
		return fmt.Errorf("guard: no configuration from the sender: %w", err)
	}
	// The sender never writes again: the read returns when it is gone.
	io.Copy(io.Discard, io.MultiReader(dec.Buffered(), stdin))
	var wg sync.WaitGroup
	failed := false
	var mu sync.Mutex
	for _, vm := range cfg.VMs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := log.With("vm", vm.Name)
			rep, err := livecut.Guard(context.Background(), livecut.GuardOptions{QMPSocket: vm.QMP, Dial: libvirtvm.DialMonitor, WorkDir: vm.WorkDir, Logger: l})
			if err != nil {
				l.Error("guard: the guest may be left paused", "err", err)
				mu.Lock()
				failed = true
				mu.Unlock()
			}
			if rep.Acted || err != nil {
				if rerr := recordGuard(vm.StateDir, now, rep, err); rerr != nil {
					l.Warn("guard: cannot record what it did", "err", rerr)
				}
			}
		}()
	}
	wg.Wait()
	if failed {
		return ErrGuardFailed
	}
	return nil
}

// GuardRecordFile, in <state dir>/<vm>/, keeps what the guard did.
const GuardRecordFile = "guard.json"

// GuardRecord is the guard's history of one VM, newest last.
type GuardRecord struct {
	// Resumes counts guests the guard resumed since the state directory
	// was created.
	Resumes uint64       `json:"resumes"`
	Events  []GuardEvent `json:"events"`
}

// GuardEvent is one run of the guard that found a cut in flight.
type GuardEvent struct {
	At         time.Time `json:"at"`
	Cut        uint64    `json:"cut"`
	Resumed    bool      `json:"resumed"`
	QEMUStatus string    `json:"qemu_status,omitempty"`
	// PausedMS is about how long the guest was stopped, from the end of
	// the cut's migration to the guard's cont.
	PausedMS float64 `json:"paused_ms,omitempty"`
	Reason   string  `json:"reason,omitempty"`
	// Error says why the guard could not finish: the guest may still be
	// paused.
	Error string `json:"error,omitempty"`
}

const maxGuardEvents = 20

func recordGuard(stateDir string, now func() time.Time, rep livecut.GuardReport, gerr error) error {
	path := filepath.Join(stateDir, GuardRecordFile)
	var rec GuardRecord
	if err := jsonfile.Read(path, &rec); err != nil && !errors.Is(err, fs.ErrNotExist) {
		rec = GuardRecord{}
	}
	ev := GuardEvent{At: now().UTC(), Cut: rep.Gen, Resumed: rep.Resumed, QEMUStatus: rep.Status, Reason: rep.Reason}
	if rep.Resumed {
		rec.Resumes++
		ev.PausedMS = ms(rep.Paused)
	}
	if gerr != nil {
		ev.Error = gerr.Error()
	}
	rec.Events = append(rec.Events, ev)
	if n := len(rec.Events); n > maxGuardEvents {
		rec.Events = rec.Events[n-maxGuardEvents:]
	}
	b, err := json.MarshalIndent(&rec, "", "  ")
	if err != nil {
		return err
	}
	// Into the directory as it is: a state directory removed (with its VM,
	// or by a test's cleanup) while the guard outlived the sender has
	// nothing to keep the record with, and the record must not bring it
	// back.
	err = vfs.WriteFileDurable(vfs.Default, path, append(b, '\n'), 0o640)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// ReadGuardRecord returns the VM's guard record, empty if there is none.
func ReadGuardRecord(stateDir string) (GuardRecord, error) {
	var rec GuardRecord
	err := jsonfile.Read(filepath.Join(stateDir, GuardRecordFile), &rec)
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return rec, err
}
