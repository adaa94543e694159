package replica

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"

	"github.com/drsync/drsync/replica/grouppoint"
	"github.com/drsync/drsync/vmspec"
)

// GroupPoints reads the restorable points of vm and of every VM its points'
// group tags name from s, as grouppoint wants them. A member without a
// replica yet has no points.
func GroupPoints(s Store, vm string) (map[string][]grouppoint.Point, error) {
	out := map[string][]grouppoint.Point{}
	todo := []string{vm}
	for len(todo) > 0 {
		m := todo[0]
		todo = todo[1:]
		if _, done := out[m]; done {
			continue
		}
		if err := vmspec.ValidVMName(m); err != nil {
			return nil, fmt.Errorf("group member: %w", err)
		}
		pts, err := s.Points(m)
		if errors.Is(err, fs.ErrNotExist) {
			out[m] = nil
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("recovery points of %s: %w", m, err)
		}
		gp := make([]grouppoint.Point, len(pts))
		for i, p := range pts {
			gp[i] = grouppoint.Point{Epoch: p.Manifest.Epoch, Cut: p.Manifest.Cut, Tag: p.Manifest.Tag()}
			if t := p.Manifest.Tag(); t != nil && m == vm {
				todo = append(todo, t.Members...)
			}
		}
		out[m] = gp
	}
	return out, nil
}

// GroupKeepFrom is the oldest epoch of vm in s that the newest keep
// complete group points of its groups need (with none complete yet, the
// oldest cut that can still complete: grouppoint.KeepFrom), 0 if none.
// A store's retention keeps vm's points from there on, whatever its own
// KeepPoints.
func GroupKeepFrom(s Store, vm string, keep int) (uint64, error) {
	pts, err := GroupPoints(s, vm)
	if err != nil {
		return 0, err
	}
	return grouppoint.KeepFrom(pts, max(keep, 1))[vm], nil
}

// AllGroupPoints is GroupPoints of each of vms, merged: the points of
// every replica in s that a group of vms involves.
func AllGroupPoints(s Store, vms []string) (map[string][]grouppoint.Point, error) {
	out := map[string][]grouppoint.Point{}
	for _, vm := range vms {
		if _, done := out[vm]; done {
			continue
		}
		got, err := GroupPoints(s, vm)
		if err != nil {
			return nil, err
		}
		maps.Copy(out, got)
	}
	return out, nil
}

// NewestGroupPoints is each consistency group's newest complete group
// point among vms' replicas in s (grouppoint.Newest).
func NewestGroupPoints(s Store, vms []string) ([]grouppoint.GroupPoint, error) {
	pts, err := AllGroupPoints(s, vms)
	if err != nil {
		return nil, fmt.Errorf("consistency groups: %w", err)
	}
	return grouppoint.Newest(pts), nil
}
