package vmspec

import (
	"fmt"
	"slices"
)

// GroupCut names one coordinated cut of a consistency group: the VMs of
// Members were all paused at one instant and each took its epoch there.
// Cut is chosen by the group's leader and increases with each cut the group
// commits, so equal (Group, Cut) on two VMs' epochs means "same instant".
// A group point is complete when every member has committed the epoch that
// carries this cut.
type GroupCut struct {
	Group   string
	Cut     uint64
	Members []string // VM names, sorted, each once; includes the carrier
}

// MaxGroupMembers bounds a group so a tag stays small on the wire.
const MaxGroupMembers = 64

// Validate checks the tag carried by vm's epoch.
func (g *GroupCut) Validate(vm string) error {
	if err := ValidVMName(g.Group); err != nil {
		return fmt.Errorf("group name: %w", err)
	}
	if g.Cut == 0 {
		return fmt.Errorf("group %s: cut 0", g.Group)
	}
	if len(g.Members) == 0 || len(g.Members) > MaxGroupMembers {
		return fmt.Errorf("group %s: %d members (1..%d)", g.Group, len(g.Members), MaxGroupMembers)
	}
	for i, m := range g.Members {
		if err := ValidVMName(m); err != nil {
			return fmt.Errorf("group %s member: %w", g.Group, err)
		}
		if i > 0 && g.Members[i-1] >= m {
			return fmt.Errorf("group %s: members not sorted and unique at %q", g.Group, m)
		}
	}
	if !slices.Contains(g.Members, vm) {
		return fmt.Errorf("group %s: %s carries the cut but is not a member", g.Group, vm)
	}
	return nil
}
