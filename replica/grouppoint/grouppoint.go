package grouppoint

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/drsync/drsync/vmspec"
)

// Point is one restorable epoch of a VM's replica.
type Point struct {
	Epoch uint64
	Cut   time.Time        // the instant the epoch was cut
	Tag   *vmspec.GroupCut // nil: not cut by a group cut
}

// Member is the epoch one member restores for a group point.
type Member struct {
	VM    string
	Epoch uint64
	Cut   time.Time
}

// GroupPoint is a complete group point: every member's epoch of one cut.
type GroupPoint struct {
	Group   string
	Cut     uint64
	Members []Member // sorted by VM, one per member of the cut
}

// Time is the point's instant for RPO purposes: the earliest member cut,
// as the members were paused together and their clocks may differ a little.
func (g *GroupPoint) Time() time.Time {
	var t time.Time
	for i, m := range g.Members {
		if i == 0 || m.Cut.Before(t) {
			t = m.Cut
		}
	}
	return t
}

// Epoch is the epoch vm restores for this point, 0 if vm is no member.
func (g *GroupPoint) Epoch(vm string) uint64 {
	i, ok := slices.BinarySearchFunc(g.Members, vm, func(m Member, vm string) int { return cmp.Compare(m.VM, vm) })
	if !ok {
		return 0
	}
	return g.Members[i].Epoch
}

type key struct {
	group string
	cut   uint64
}

// Complete returns the complete group points of group among the VMs'
// points (by VM name), newest cut first. A cut is complete when every
// member its tags list has a point carrying it; tags of one cut that
// disagree on the members make it incomplete, as no member list can be
// trusted then.
func Complete(group string, points map[string][]Point) []GroupPoint {
	type seen struct {
		members []string
		got     []Member
		bad     bool
	}
	cuts := map[uint64]*seen{}
	for vm, pts := range points {
		for _, p := range pts {
			t := p.Tag
			if t == nil || t.Group != group || !slices.Contains(t.Members, vm) {
				continue
			}
			s := cuts[t.Cut]
			if s == nil {
				s = &seen{members: t.Members}
				cuts[t.Cut] = s
			}
			if !slices.Equal(s.members, t.Members) {
				s.bad = true
			}
			if slices.ContainsFunc(s.got, func(m Member) bool { return m.VM == vm }) {
				s.bad = true // one VM with two epochs of one cut: not a cut
			}
			s.got = append(s.got, Member{VM: vm, Epoch: p.Epoch, Cut: p.Cut})
		}
	}
	var out []GroupPoint
	for cut, s := range cuts {
		if s.bad || len(s.got) != len(s.members) {
			continue
		}
		slices.SortFunc(s.got, func(a, b Member) int { return cmp.Compare(a.VM, b.VM) })
		if !slices.EqualFunc(s.got, s.members, func(m Member, vm string) bool { return m.VM == vm }) {
			continue
		}
		out = append(out, GroupPoint{Group: group, Cut: cut, Members: s.got})
	}
	slices.SortFunc(out, func(a, b GroupPoint) int { return cmp.Compare(b.Cut, a.Cut) })
	return out
}

// Groups lists the groups any point is tagged with, sorted.
func Groups(points map[string][]Point) []string {
	var gs []string
	for _, pts := range points {
		for _, p := range pts {
			if p.Tag != nil && !slices.Contains(gs, p.Tag.Group) {
				gs = append(gs, p.Tag.Group)
			}
		}
	}
	slices.Sort(gs)
	return gs
}

// Before returns the newest of gps (newest first, as Complete returns
// them) whose Time is before t, as a single VM's --before picks, and
// whether there is one.
func Before(gps []GroupPoint, t time.Time) (GroupPoint, bool) {
	for _, g := range gps {
		if g.Time().Before(t) {
			return g, true
		}
	}
	return GroupPoint{}, false
}

// KeepFrom returns, for each VM that is a member of one of the newest keep
// complete points of each group, the oldest epoch it must retain so that
// those group points stay restorable. A replica rolls back through every
// point between its newest epoch and the one restored, so retaining that
// epoch means retaining all later ones too. A VM absent from the result has
// no group constraint.
func KeepFrom(points map[string][]Point, keep int) map[string]uint64 {
	out := map[string]uint64{}
	if keep <= 0 {
		return out
	}
	lower := func(vm string, epoch uint64) {
		if e, ok := out[vm]; !ok || epoch < e {
			out[vm] = epoch
		}
	}
	for _, g := range Groups(points) {
		gps := Complete(g, points)
		for _, gp := range gps[:min(keep, len(gps))] {
			for _, m := range gp.Members {
				lower(m.VM, m.Epoch)
			}
		}
		// A group with no complete point yet keeps what its oldest cut
		// that can still complete needs: without it, a member committing
		// twice before another commits once would lose the group's first
		// point. Once a point is complete, what it keeps covers later cuts.
		if len(gps) == 0 {
			for vm, e := range pendingFrom(g, points) {
				lower(vm, e)
			}
		}
	}
	return out
}

// pendingFrom returns, for the oldest cut of group that is not complete
// but still can be (every member listed either holds it or has not cut
// past it), each member's epoch of that cut.
func pendingFrom(group string, points map[string][]Point) map[string]uint64 {
	newest := map[string]uint64{}           // member → newest cut it holds
	byCut := map[uint64]map[string]uint64{} // cut → member → epoch
	members := map[uint64][]string{}
	for vm, pts := range points {
		for _, p := range pts {
			t := p.Tag
			if t == nil || t.Group != group || !slices.Contains(t.Members, vm) {
				continue
			}
			newest[vm] = max(newest[vm], t.Cut)
			if byCut[t.Cut] == nil {
				byCut[t.Cut] = map[string]uint64{}
				members[t.Cut] = t.Members
			}
			byCut[t.Cut][vm] = p.Epoch
		}
	}
	cuts := slices.Sorted(maps.Keys(byCut))
	for _, c := range cuts {
		alive := true
		for _, m := range members[c] {
			if _, has := byCut[c][m]; !has && newest[m] > c {
				alive = false // m went past c without it
			}
		}
		if alive {
			return byCut[c]
		}
	}
	return nil
}

// Newest returns each group's newest complete point, by group name; a
// group with none is left out.
func Newest(points map[string][]Point) []GroupPoint {
	var out []GroupPoint
	for _, g := range Groups(points) {
		if gps := Complete(g, points); len(gps) > 0 {
			out = append(out, gps[0])
		}
	}
	return out
}

// MemberEpochs says which epoch each member resumes for g:
// "db epoch 4, web-1 epoch 9".
func (g *GroupPoint) MemberEpochs() string {
	ms := make([]string, len(g.Members))
	for i, m := range g.Members {
		ms[i] = fmt.Sprintf("%s epoch %d", m.VM, m.Epoch)
	}
	return strings.Join(ms, ", ")
}

// WriteTable writes gps, newest complete points, as the table drsync
// status prints under its VMs; nothing when there are none.
func WriteTable(w io.Writer, gps []GroupPoint, now time.Time) error {
	if len(gps) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nCONSISTENCY GROUP\tGROUP POINT\tCUT\tRPO LAG\tMEMBERS RESUME")
	for _, g := range gps {
		at := g.Time()
		fmt.Fprintf(tw, "%s\tcut %d\t%s\t%s\t%s\n", g.Group, g.Cut, at.UTC().Format(time.RFC3339), now.Sub(at).Round(time.Second), g.MemberEpochs())
	}
	return tw.Flush()
}
