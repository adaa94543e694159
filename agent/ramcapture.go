package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"strconv"
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
// backend, a kernel without write-protect-async userfaultfd, a QEMU whose
// process is not on this host.
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

// probeSharedRAM asks the QEMU behind socket, reached by dial, for its
// RAM backend, and for its UUID when uuid is set.
func probeSharedRAM(ctx context.Context, dial livecut.DialFunc, socket string, uuid *string) (sharedRAM, error) {
	sess, err := dial(ctx, socket, qmp.Options{})
	if err != nil {
		return sharedRAM{}, err
	}
	defer sess.Close()
	if uuid != nil {
		var u struct {
			UUID string `json:"UUID"`
		}
		if err := sess.Execute(ctx, "query-uuid", nil, &u); err != nil {
			return sharedRAM{}, err
		}
		*uuid = u.UUID
	}
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

// pidByUUID finds the QEMU process of this host started with -uuid uuid
// (libvirt gives every domain's QEMU its UUID), under procDir.
func pidByUUID(procDir, uuid string) (int, error) {
	if uuid == "" || uuid == "00000000-0000-0000-0000-000000000000" {
		return 0, fmt.Errorf("%w: QEMU reports no UUID to find its process by", ErrNoTrackedRAM)
	}
	ents, err := os.ReadDir(procDir)
	if err != nil {
		return 0, fmt.Errorf("find QEMU's pid: %w", err)
	}
	want := []byte("\x00-uuid\x00" + uuid + "\x00")
	var found []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procDir, e.Name(), "cmdline"))
		if err != nil {
			continue // gone, or not ours to read
		}
		if bytes.Contains(append([]byte{0}, b...), want) {
			found = append(found, pid)
		}
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("%w: no process of this host runs QEMU with -uuid %s (is the domain on another host?)", ErrNoTrackedRAM, uuid)
	case 1:
		return found[0], nil
	}
	return 0, fmt.Errorf("find QEMU's pid: processes %v all run QEMU with -uuid %s", found, uuid)
}

// setupRAMCapture makes o track the guest's RAM writes when mode asks for
// it and the guest and kernel allow it. With RAMCaptureAuto anything
// missing means full cuts (logged); with RAMCaptureTracked it is an error.
// QEMU's pid is looked up each time tracking starts, so a restarted QEMU
// is found: from the QMP socket's peer credentials, or for a libvirt
// domain, whose monitor is libvirt's, as the process of this host that
// runs QEMU with the domain's UUID.
func setupRAMCapture(ctx context.Context, mode string, o *livecut.Options, libvirt bool, log *slog.Logger) error {
	if mode == RAMCaptureFull {
		return nil
	}
	dial := o.Dial
	if dial == nil {
		dial = livecut.DialQMP
	}
	socket := o.QMPSocket
	findPID := func() (int, error) { return qemuPID(socket) }
	var uuid *string
	if libvirt {
		uuid = new(string)
		findPID = func() (int, error) { return pidByUUID("/proc", *uuid) }
	}
	ram, err := func() (sharedRAM, error) {
		if err := dirtylog.CheckKernel(); err != nil {
			return sharedRAM{}, fmt.Errorf("%w: %w", ErrNoTrackedRAM, err)
		}
		ram, err := probeSharedRAM(ctx, dial, socket, uuid)
		if err == nil && libvirt {
			// Found now, so that a domain on another host is refused
			// at start rather than at the first cut.
			_, err = findPID()
		}
		return ram, err
	}()
	if err != nil {
		if mode == RAMCaptureTracked {
			return fmt.Errorf("ram_capture = %q: %w", RAMCaptureTracked, err)
		}
		log.Info("cuts migrate all of the guest's RAM", "ram_capture", mode, "why", err)
		return nil
	}
	o.SharedRAM = ram.ID
	o.TrackRAM = func() (livecut.RAMTracker, error) {
		pid, err := findPID()
		if err != nil {
			return nil, err
		}
		return dirtylog.TrackGuest(pid, ram.Size)
	}
	log.Info("cuts track the guest's RAM writes", "memory_backend", ram.ID, "size", ram.Size)
	return nil
}
