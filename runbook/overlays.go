package runbook

import (
	"errors"
	"fmt"
	"strings"
)

// After a failover the VM's disk overlays are production data: they hold
// everything the VM wrote at the DR site. The rule, for every run of a
// runbook (failover, failback, --epoch/--before):
//
//   - A run never deletes or recreates overlays a VM wrote to.
//   - When an earlier run's VM is gone and its overlays hold writes, the
//     run boots the VM cold from them: no memory state, a power-on. The
//     replica's memory is not loaded then: it belongs to the epoch the
//     overlays grew from, and loading it over newer disks would leave the
//     guest's page cache and file systems contradicting its disks. This
//     is what a re-run is for (bring the VMs up) and it loses nothing;
//     refusing instead would leave production down until an operator
//     finds the right flag.
//   - A run refuses, before anything starts, when a QEMU still holds the
//     overlays, when they cannot be read, or when --epoch/--before asks
//     for another point than the one the VM runs or ran from: an older
//     point must not silently replace what the DR site wrote.
//   - Starting over from the replica is explicit (--discard-dr-writes
//     naming the VM) and refused while the VM runs: the VM's work
//     directory is moved aside, not deleted.
//
// Drills run in a work directory of their own (workDir) that no VM's can
// be, so they never touch a failover's overlays.

// ErrDRWrites marks a run refused because it would replace or ignore what
// a failed-over VM wrote at the DR site, or start a second QEMU on it.
var ErrDRWrites = errors.New("the VM's disk overlays hold what it wrote at the DR site")

// Prior is what earlier runs left of a VM: the run log's start record,
// whether its QEMU still runs, and the state of its disk overlays.
type Prior struct {
	VM     string // its name, for the messages
	Logged bool   // the run log says an earlier run started the VM
	PID    int    // that run's QEMU
	Epoch  uint64 // the epoch that run resumed (0: not known)
	Alive  bool   // its QEMU still runs the guest
	// Overlay paths by state (see takeover.InspectOverlays).
	Written    []string // hold the VM's writes
	InUse      []string // a QEMU holds them open
	Unreadable []string // could not be inspected: path and why
}

// Action is what a run does to bring a VM up.
type Action int

const (
	// ActResume: a takeover from the replica's epoch with its memory; no
	// overlay holds writes, so nothing is lost by making new ones.
	ActResume Action = iota
	// ActKeep: the VM an earlier run started still runs.
	ActKeep
	// ActBoot: a cold boot from the overlays an earlier run left.
	ActBoot
	// ActDiscard: move the work directory aside, then ActResume.
	ActDiscard
)

// DiscardFlag is the option that starts the VMs it names over from their
// replicas, moving aside what they wrote at the DR site.
const DiscardFlag = "--discard-dr-writes"

// Decide says what a run does with a VM given what earlier runs left.
// point is the epoch --epoch/--before asked for (0 when neither was
// given: the run continues with what is there); discard is
// --discard-dr-writes naming this VM. An error wrapping ErrDRWrites is a
// refusal.
func Decide(p Prior, point uint64, discard bool) (Action, error) {
	written := len(p.Written) > 0
	flag := DiscardFlag + " " + p.VM
	asked := func() string {
		if p.Epoch == 0 {
			return fmt.Sprintf("epoch %d was asked for, and the epoch they grew from is not known", point)
		}
		return fmt.Sprintf("they grew from epoch %d, not the epoch %d asked for", p.Epoch, point)
	}
	switch {
	case p.Alive && discard:
		return 0, fmt.Errorf("%w: the VM still runs (pid %d); stop it first (QMP quit), then run with %s", ErrDRWrites, p.PID, flag)
	case p.Alive && point != 0 && point != p.Epoch:
		return 0, fmt.Errorf("%w: the VM still runs (pid %d) from epoch %d, not the epoch %d asked for; to start over from epoch %d, stop it (QMP quit) and run with %s", ErrDRWrites, p.PID, p.Epoch, point, point, flag)
	case p.Alive:
		return ActKeep, nil
	case len(p.InUse) > 0:
		return 0, fmt.Errorf("%w: a QEMU still holds %s (the run log's pid %d does not answer as running); stop it first", ErrDRWrites, strings.Join(p.InUse, ", "), p.PID)
	case discard && (written || len(p.Unreadable) > 0 || p.Logged):
		return ActDiscard, nil
	case discard:
		return ActResume, nil
	case len(p.Unreadable) > 0:
		return 0, fmt.Errorf("%w: cannot tell what %s hold; %s moves the VM's work directory aside and starts over from the replica", ErrDRWrites, strings.Join(p.Unreadable, ", "), flag)
	case written && point != 0 && point != p.Epoch:
		return 0, fmt.Errorf("%w: %s: %s; %s moves them aside and starts over from epoch %d", ErrDRWrites, strings.Join(p.Written, ", "), asked(), flag, point)
	case written:
		return ActBoot, nil
	}
	return ActResume, nil
}
