package takeover

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/drsync/drsync/replica"
)

// ErrOverlaysWritten: the work directory holds disk overlays a VM has
// written to, or a QEMU holds open. After a failover they are the only
// copy of what the VM did at the DR site, so a takeover never replaces
// them; BootOverlays starts the VM from them, MoveAside puts them away.
var ErrOverlaysWritten = errors.New("disk overlays hold the writes of a VM that ran from them")

// OverlayPath is where a takeover in workDir keeps disk d's overlay.
func OverlayPath(workDir string, d Disk) string {
	return filepath.Join(workDir, "disk-"+d.Node+".qcow2")
}

// OverlayState is what a disk overlay in a work directory holds.
type OverlayState int

const (
	OverlayAbsent     OverlayState = iota // no overlay
	OverlayUnwritten                      // created, but no VM wrote to it
	OverlayWritten                        // a VM wrote to it: data of its own
	OverlayInUse                          // a QEMU holds it open (image lock)
	OverlayUnreadable                     // it could not be inspected (Err says why)
)

func (s OverlayState) String() string {
	switch s {
	case OverlayAbsent:
		return "absent"
	case OverlayUnwritten:
		return "unwritten"
	case OverlayWritten:
		return "written"
	case OverlayInUse:
		return "in use"
	}
	return "unreadable"
}

// Overlay is one disk overlay found in a work directory.
type Overlay struct {
	Path  string
	State OverlayState
	Err   error // OverlayUnreadable, OverlayInUse: why
}

// InspectOverlays reports what the overlays of disks in workDir hold,
// changing nothing (qemu-img map, which opens them read-only and fails on
// the image lock of a QEMU that runs from them).
func InspectOverlays(workDir string, disks []Disk) []Overlay {
	var out []Overlay
	for _, d := range disks {
		out = append(out, inspectOverlay(OverlayPath(workDir, d)))
	}
	return out
}

func inspectOverlay(path string) Overlay {
	ov := Overlay{Path: path}
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return ov
	} else if err != nil {
		ov.State, ov.Err = OverlayUnreadable, err
		return ov
	}
	out, err := exec.Command("qemu-img", "map", "--output=json", path).Output()
	if err != nil {
		var msg string
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(bytes.TrimSpace(ee.Stderr))
		}
		ov.State, ov.Err = OverlayUnreadable, fmt.Errorf("qemu-img map: %w: %s", err, msg)
		if strings.Contains(msg, "lock") {
			ov.State = OverlayInUse
		}
		return ov
	}
	written, err := mapWritten(out)
	switch {
	case err != nil:
		ov.State, ov.Err = OverlayUnreadable, err
	case written:
		ov.State = OverlayWritten
	default:
		ov.State = OverlayUnwritten
	}
	return ov
}

// mapWritten says whether qemu-img map's JSON output lists any extent of
// the top image itself (depth 0): data or zeros the VM wrote. A new
// overlay has every extent in its backing file (depth 1).
func mapWritten(out []byte) (bool, error) {
	var extents []struct {
		Depth *int `json:"depth"`
	}
	if err := json.Unmarshal(out, &extents); err != nil {
		return false, fmt.Errorf("qemu-img map: %w", err)
	}
	for _, e := range extents {
		if e.Depth == nil {
			return false, errors.New("qemu-img map: an extent without depth")
		}
		if *e.Depth == 0 {
			return true, nil
		}
	}
	return false, nil
}

// checkNoWrittenOverlays refuses a work directory whose overlays a VM
// wrote to or a QEMU holds.
func checkNoWrittenOverlays(workDir string, disks []Disk) error {
	var bad []string
	for _, ov := range InspectOverlays(workDir, disks) {
		switch ov.State {
		case OverlayWritten:
			bad = append(bad, ov.Path+" (written)")
		case OverlayInUse, OverlayUnreadable:
			bad = append(bad, fmt.Sprintf("%s (%s: %v)", ov.Path, ov.State, ov.Err))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("takeover: %s: %w", strings.Join(bad, ", "), ErrOverlaysWritten)
	}
	return nil
}

// PrepareBoot plans a cold boot of the VM from the overlays an earlier
// takeover left in o.WorkDir: the guest starts from its disks, as after a
// power cut, with no memory state. The replica's memory is never loaded
// here: it belongs to the epoch the overlays grew from, and the disks have
// moved on since. Nothing in the work directory is changed; the replica is
// fenced (o.Fence), since the overlays read through to it.
func PrepareBoot(o Options) (*Plan, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	store, vm := o.store()
	r, err := store.Open(context.Background(), vm, replica.OpenOptions{AllowTakenOver: true})
	if err != nil {
		return nil, fmt.Errorf("takeover: replica %s: %w", o.Replica, err)
	}
	defer r.Close()
	m := r.Manifest()
	if o.Fence != "" {
		if err := r.MarkTakenOver(replica.TakeoverMark{Epoch: m.Epoch, At: time.Now().UTC(), Reason: o.Fence}); err != nil {
			return nil, fmt.Errorf("takeover: %w", err)
		}
	}
	main := m.RAM(o.MainRAM)
	if main == nil {
		return nil, fmt.Errorf("takeover: replica %s has no RAM block %q (the guest's memory size)", o.Replica, o.MainRAM)
	}
	p := &Plan{VM: m.VM, RAMSize: main.Size, QMP: filepath.Join(o.WorkDir, "qmp.sock"), Boot: true, Dial: o.Dial}
	args := append([]string{}, o.Args...)
	args = append(args, "-m", fmt.Sprintf("%dM", main.Size>>20))
	for _, d := range o.Disks {
		ov := OverlayPath(o.WorkDir, d)
		if _, err := os.Stat(ov); err != nil {
			return nil, fmt.Errorf("takeover: boot from the overlays: disk %q: %w", d.Target, err)
		}
		p.Overlays = append(p.Overlays, ov)
		args = append(args,
			"-blockdev", fmt.Sprintf("driver=file,node-name=%s-file,filename=%s", d.Node, ov),
			"-blockdev", fmt.Sprintf("driver=qcow2,node-name=%s,file=%s-file", d.Node, d.Node))
	}
	args = append(args, "-qmp", "unix:"+p.QMP+",server=on,wait=off")
	p.Command = append([]string{o.QEMU}, args...)
	return p, nil
}

// MoveAside renames the work directory dir to to (which must not exist)
// and points the overlays there whose backing files lay inside dir (a
// rebuilt recovery point) at their new place, so the moved overlays stay
// readable. Nothing is deleted.
func MoveAside(dir, to string) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		return fmt.Errorf("takeover: move aside: %w", err)
	}
	if _, err := os.Lstat(to); err == nil {
		return fmt.Errorf("takeover: move aside %s: %s exists", dir, to)
	}
	if err := os.Rename(dir, to); err != nil {
		return fmt.Errorf("takeover: move aside: %w", err)
	}
	absDir, _ := filepath.Abs(dir)
	ovs, _ := filepath.Glob(filepath.Join(to, "disk-*.qcow2"))
	for _, ov := range ovs {
		out, err := exec.Command("qemu-img", "info", "-U", "--output=json", ov).Output()
		if err != nil {
			return fmt.Errorf("takeover: moved %s to %s, but cannot read %s: %w", dir, to, ov, err)
		}
		var info struct {
			Backing string `json:"backing-filename"`
			Format  string `json:"backing-filename-format"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			return fmt.Errorf("takeover: moved %s to %s, but cannot read %s: %w", dir, to, ov, err)
		}
		rel, err := filepath.Rel(absDir, info.Backing)
		if info.Backing == "" || err != nil || !filepath.IsLocal(rel) {
			continue // backed by the replica, which stays where it is
		}
		args := []string{"rebase", "-u", "-b", filepath.Join(to, rel)}
		if info.Format != "" {
			args = append(args, "-F", info.Format)
		}
		if out, err := exec.Command("qemu-img", append(args, ov)...).CombinedOutput(); err != nil {
			return fmt.Errorf("takeover: moved %s to %s, but could not point %s at its backing file there: %w: %s", dir, to, ov, err, bytes.TrimSpace(out))
		}
	}
	return nil
}
