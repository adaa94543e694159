package runbook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/grouppoint"
	"github.com/drsync/drsync/takeover"
)

// PinConsistencyGroup makes the members of consistency group group resume
// its newest complete group point (with Before set, the newest cut before
// it), so that they all come back from the same instant even when
// some committed later epochs of their own. pts are the replicas' points
// by VM name (replica.GroupPoints). Every member must be a VM of the
// runbook: failing over part of a group would break what the group is for.
//
// A consistency group is what the protected site cut together; it is
// unrelated to the runbook's Groups, which only order the start-up.
func (rb *Runbook) PinConsistencyGroup(group string, pts map[string][]grouppoint.Point) (grouppoint.GroupPoint, error) {
	if rb.Epoch != 0 {
		return grouppoint.GroupPoint{}, fmt.Errorf("consistency group %s: an epoch number names one VM's point, not the group's; pick the group point by time", group)
	}
	gps := grouppoint.Complete(group, pts)
	if len(gps) == 0 {
		return grouppoint.GroupPoint{}, fmt.Errorf("consistency group %s: no complete group point among the replicas' retained points (every member must have committed the epoch of one group cut)", group)
	}
	gp := gps[0]
	if !rb.Before.IsZero() {
		var ok bool
		if gp, ok = grouppoint.Before(gps, rb.Before); !ok {
			return grouppoint.GroupPoint{}, fmt.Errorf("consistency group %s: no complete group point cut before %s (the oldest retained is cut %d at %s)",
				group, rb.Before.UTC().Format("2006-01-02T15:04:05Z"), gps[len(gps)-1].Cut, gps[len(gps)-1].Time().UTC().Format("2006-01-02T15:04:05Z"))
		}
	}
	var missing []string
	for _, m := range gp.Members {
		if !slices.ContainsFunc(rb.VMs, func(v VM) bool { return v.Name == m.VM }) {
			missing = append(missing, m.VM)
		}
	}
	if len(missing) > 0 {
		return grouppoint.GroupPoint{}, fmt.Errorf("consistency group %s: members %s are not in runbook %q; a group fails over whole", group, strings.Join(missing, ", "), rb.Name)
	}
	rb.Pinned = map[string]uint64{}
	for _, m := range gp.Members {
		rb.Pinned[m.VM] = m.Epoch
	}
	return gp, nil
}

// PinConsistencyGroupIn is PinConsistencyGroup with the points read from
// the store of the runbook's replicas, and the chosen point written to
// out; nothing when group is empty.
func (rb *Runbook) PinConsistencyGroupIn(group string, out io.Writer, now time.Time) error {
	if group == "" {
		return nil
	}
	store, done, err := replicaStore(rb)
	if err != nil {
		return fmt.Errorf("consistency group %s: %w", group, err)
	}
	defer done()
	var vms []string
	for _, v := range rb.VMs {
		vms = append(vms, v.Name)
	}
	// The points are read while every member's replica is locked: a
	// receiver still applying an epoch (its sender died just after
	// sending the commit) is waited for, so the group point chosen is not
	// one that epoch's pruning removes a moment later.
	var held []replica.Handle
	defer func() {
		for _, h := range held {
			h.Close()
		}
	}()
	for _, vm := range slices.Sorted(slices.Values(vms)) {
		if _, err := store.Manifest(vm); errors.Is(err, fs.ErrNotExist) {
			continue // no replica yet: the group has no point with it
		}
		h, err := store.Open(context.Background(), vm, replica.OpenOptions{
			AllowTakenOver: true, Holder: "a failover choosing its consistency group's point", LockWait: takeover.DefaultLockWait})
		if err != nil {
			return fmt.Errorf("consistency group %s: replica of %s: %w", group, vm, err)
		}
		held = append(held, h)
	}
	pts, err := replica.AllGroupPoints(store, vms)
	if err != nil {
		return fmt.Errorf("consistency group %s: %w", group, err)
	}
	gp, err := rb.PinConsistencyGroup(group, pts)
	if err != nil {
		return err
	}
	at := gp.Time()
	_, err = fmt.Fprintf(out, "consistency group %s: group point of cut %d at %s (%s old): %s\n",
		group, gp.Cut, at.UTC().Format(time.RFC3339), now.Sub(at).Round(time.Second), gp.MemberEpochs())
	return err
}
