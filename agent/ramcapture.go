package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
)

// RAM capture of a live VM (VMSettings.RAMCapture): how each cut takes
// the guest's memory.
const (
	// RAMCaptureAuto tracks the guest's writes when its RAM is a shared
	// memfd backend and the kernel can track it, else migrates all of RAM.
	RAMCaptureAuto = "auto"
	// RAMCaptureTracked requires tracking: a sender whose guest or kernel
	// cannot do it refuses to start.
	RAMCaptureTracked = "tracked"
	// RAMCaptureFull migrates all of RAM at every cut.
	RAMCaptureFull = "full"
)

// ErrNoTrackedRAM says a VM's RAM cannot be tracked: no shared memfd
// backend, a kernel without write-protect-async userfaultfd, a libvirt
// domain.
var ErrNoTrackedRAM = errors.New("guest RAM writes cannot be tracked")

// validateRAMCapture checks ram_capture and fills in its default.
func (v *VMSettings) validateRAMCapture() error {
	if v.RAMCapture == "" {
		v.RAMCapture = RAMCaptureAuto
	}
	switch v.RAMCapture {
	case RAMCaptureAuto, RAMCaptureFull:
	case RAMCaptureTracked:
		if !v.Live() {
			return field.Errorf("ram_capture", "%q only applies to a live VM (qmp = \"/path/to/qmp.sock\")", RAMCaptureTracked)
		}
		if v.Libvirt.Enabled() {
			// Tracking needs QEMU's pid and its memory backend; drsync
			// reaches a domain's QEMU only through libvirt's monitor and
			// does not look either up there.
			return field.Errorf("ram_capture", "%q is not supported for a libvirt domain; use %q or %q", RAMCaptureTracked, RAMCaptureAuto, RAMCaptureFull)
		}
	default:
		return field.Errorf("ram_capture", "%q: want %q, %q or %q", v.RAMCapture, RAMCaptureAuto, RAMCaptureTracked, RAMCaptureFull)
	}
	return nil
}

// memdev is an entry of QEMU's query-memdev.
type memdev struct {
	ID    string `json:"id"`
	Size  uint64 `json:"size"`
	Share bool   `json:"share"`
}

// qomProp is an entry of QEMU's qom-list.
type qomProp struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// sharedRAM is the guest RAM block a tracked cut follows.
type sharedRAM struct {
	ID   string // the memory backend's id, which names the RAM block in the migration stream
	Size uint64
}

// pickSharedRAM finds the machine's RAM backend (machine: qom-get of
// /machine's memory-backend, a QOM path) among the memory backends and
// the /objects children, and checks that tracking can follow it: a memfd
// shared with other processes.
func pickSharedRAM(machine string, devs []memdev, objects []qomProp) (sharedRAM, error) {
	if machine == "" {
		return sharedRAM{}, fmt.Errorf("%w: the machine has no memory backend (start QEMU with -object memory-backend-memfd,id=ram0,size=...,share=on -machine memory-backend=ram0)", ErrNoTrackedRAM)
	}
	id := path.Base(machine)
	typ := ""
	for _, o := range objects {
		if o.Name == id {
			typ = o.Type
		}
	}
	if typ != "child<"+dirtylog.MemfdBackendName+">" {
		return sharedRAM{}, fmt.Errorf("%w: the machine's memory backend %q is %q, not a %s", ErrNoTrackedRAM, id, typ, dirtylog.MemfdBackendName)
	}
	for _, d := range devs {
		if d.ID != id {
			continue
		}
		if !d.Share {
			return sharedRAM{}, fmt.Errorf("%w: the memory backend %q is not shared (share=on)", ErrNoTrackedRAM, id)
		}
		if d.Size == 0 {
			return sharedRAM{}, fmt.Errorf("%w: the memory backend %q has no size", ErrNoTrackedRAM, id)
		}
		return sharedRAM{ID: id, Size: d.Size}, nil
	}
	return sharedRAM{}, fmt.Errorf("%w: query-memdev does not list the memory backend %q", ErrNoTrackedRAM, id)
}

// probeSharedRAM asks the QEMU behind socket for its RAM backend.
func probeSharedRAM(ctx context.Context, socket string) (sharedRAM, error) {
	sess, err := qmp.Dial(ctx, socket, qmp.Options{})
	if err != nil {
		return sharedRAM{}, err
	}
	defer sess.Close()
	var machine string
	if err := sess.Execute(ctx, "qom-get", map[string]any{"path": "/machine", "property": "memory-backend"}, &machine); err != nil {
		return sharedRAM{}, err
	}
	var devs []memdev
	if err := sess.Execute(ctx, "query-memdev", nil, &devs); err != nil {
		return sharedRAM{}, err
	}
	var objects []qomProp
	if err := sess.Execute(ctx, "qom-list", map[string]any{"path": "/objects"}, &objects); err != nil {
		return sharedRAM{}, err
	}
	return pickSharedRAM(machine, devs, objects)
}

// qemuPID is the pid of the process listening on the QMP socket, from the
// socket's peer credentials. It needs no reply from QEMU, so it works
// while a cut's session holds the monitor.
func qemuPID(socket string) (int, error) {
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return 0, fmt.Errorf("find QEMU's pid: %w", err)
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("find QEMU's pid: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, fmt.Errorf("find QEMU's pid: %w", err)
	}
	if cerr != nil {
		return 0, fmt.Errorf("find QEMU's pid: SO_PEERCRED on %s: %w", socket, cerr)
	}
	return int(cred.Pid), nil
}

// setupRAMCapture makes o track the guest's RAM writes when mode asks for
// it and the guest and kernel allow it. With RAMCaptureAuto anything
// missing means full cuts (logged); with RAMCaptureTracked it is an error.
// QEMU's pid is looked up each time tracking starts, so a restarted QEMU
// is found.
func setupRAMCapture(ctx context.Context, mode string, o *livecut.Options, libvirt bool, log *slog.Logger) error {
	if mode == RAMCaptureFull {
		return nil
	}
	ram, err := func() (sharedRAM, error) {
		if libvirt {
			return sharedRAM{}, fmt.Errorf("%w: not supported for libvirt domains", ErrNoTrackedRAM)
		}
		if err := dirtylog.CheckKernel(); err != nil {
			return sharedRAM{}, fmt.Errorf("%w: %w", ErrNoTrackedRAM, err)
		}
		return probeSharedRAM(ctx, o.QMPSocket)
	}()
	if err != nil {
		if mode == RAMCaptureTracked {
			return fmt.Errorf("ram_capture = %q: %w", RAMCaptureTracked, err)
		}
		log.Info("cuts migrate all of the guest's RAM", "ram_capture", mode, "why", err)
		return nil
	}
	socket := o.QMPSocket
	o.SharedRAM = ram.ID
	o.TrackRAM = func() (livecut.RAMTracker, error) {
		pid, err := qemuPID(socket)
		if err != nil {
			return nil, err
		}
		return dirtylog.TrackGuest(pid, ram.Size)
	}
	log.Info("cuts track the guest's RAM writes", "memory_backend", ram.ID, "size", ram.Size)
	return nil
}
