package replica

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"

	"github.com/drsync/drsync/replica/grouppoint"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
)

// GroupPoints reads the restorable points of vm and of every VM its points'
// group tags name, as grouppoint wants them. A member without a replica
// yet has no points.
func GroupPoints(fsys vfs.FS, root, vm string) (map[string][]grouppoint.Point, error) {
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
		pts, err := Points(fsys, path.Join(root, m))
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

// groupKeepFrom is the oldest epoch of vm that the newest KeepPoints
// complete group points of its groups need, 0 if none.
func (s FileStore) groupKeepFrom(vm string) (uint64, error) {
	pts, err := GroupPoints(s.FS, s.Root, vm)
	if err != nil {
		return 0, err
	}
	return grouppoint.KeepFrom(pts, max(s.KeepPoints, 1))[vm], nil
}

// AllGroupPoints is GroupPoints of each of vms, merged: the points of
// every group any of them belongs to.
func AllGroupPoints(fsys vfs.FS, root string, vms []string) (map[string][]grouppoint.Point, error) {
	out := map[string][]grouppoint.Point{}
	for _, vm := range vms {
		if _, done := out[vm]; done {
			continue
		}
		got, err := GroupPoints(fsys, root, vm)
		if err != nil {
			return nil, err
		}
		maps.Copy(out, got)
	}
	return out, nil
}

// NewestGroupPoints is each consistency group's newest complete group
// point among vms' replicas under root (grouppoint.Newest).
func NewestGroupPoints(fsys vfs.FS, root string, vms []string) ([]grouppoint.GroupPoint, error) {
	pts, err := AllGroupPoints(fsys, root, vms)
	if err != nil {
		return nil, fmt.Errorf("consistency groups: %w", err)
	}
	return grouppoint.Newest(pts), nil
}
