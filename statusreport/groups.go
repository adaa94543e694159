package statusreport

import (
	"slices"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/grouppoint"
)

// pageGroups is the status page's consistency-group table; a replica it
// cannot read leaves its groups out rather than showing a wrong lag.
func (r Receiver) pageGroups() []grouppoint.GroupPoint {
	gps, _ := replica.NewestGroupPoints(r.Store, r.VMs)
	return gps
}

// Group is a VM's consistency group in the status report (each member's
// row carries it, so "drsync status --json" stays one row per VM).
//
// A receiver reports the group's newest complete group point: its cut
// number, its instant (the earliest member's cut), the epoch this VM
// restores for it, and the lag behind it; a group with no complete
// point yet is not reported. A sender reports the group as configured
// (members, rpo) and its lag as the group's controller counts it: behind
// the oldest committed cut of its members on this host.
type Group struct {
	Name    string   `json:"name"`
	Members []string `json:"members"`
	// RPOSeconds is the group's rpo (a sender's configuration); 0: unknown.
	RPOSeconds float64 `json:"rpo_seconds,omitempty"`
	// Cut is the newest complete group point's cut number (receiver).
	Cut uint64 `json:"cut,omitempty"`
	// CutTime is the group point's instant (receiver), or the oldest
	// local member's committed cut (sender).
	CutTime time.Time `json:"cut_time,omitzero"`
	// Epoch is the epoch this VM restores for the group point (receiver).
	Epoch         uint64   `json:"epoch,omitempty"`
	RPOLagSeconds *float64 `json:"rpo_lag_seconds,omitempty"`
	// OverRPO says the lag exceeds the group's rpo.
	OverRPO bool `json:"over_rpo,omitempty"`
}

func (g *Group) setLag(at, now time.Time) {
	if at.IsZero() {
		return
	}
	g.CutTime = at.UTC()
	lag := now.Sub(at).Seconds()
	g.RPOLagSeconds = &lag
	g.OverRPO = g.RPOSeconds > 0 && lag > g.RPOSeconds
}

// AddGroupPoints sets, on the rows of the members of gps (a receiver's
// newest complete group points), their group and its point at now.
func AddGroupPoints(rows []Row, gps []grouppoint.GroupPoint, now time.Time) {
	for i := range rows {
		for _, gp := range gps {
			e := gp.Epoch(rows[i].VM)
			if e == 0 {
				continue
			}
			g := &Group{Name: gp.Group, Cut: gp.Cut, Epoch: e}
			for _, m := range gp.Members {
				g.Members = append(g.Members, m.VM)
			}
			g.setLag(gp.Time(), now)
			rows[i].Group = g
		}
	}
}

// addSenderGroups sets, on the rows of vms that are members of a group,
// the group as configured and its lag at now behind the oldest committed
// cut among its members here (none while one has committed nothing).
func addSenderGroups(rows []Row, vms []SenderVM, now time.Time) {
	for i, vm := range vms {
		o := vm.Group
		if o == nil {
			continue
		}
		g := &Group{Name: o.Name, Members: slices.Clone(o.Members), RPOSeconds: o.RPO.Seconds()}
		var oldest time.Time
		for j, other := range vms {
			if other.Group == nil || other.Group.Name != o.Name {
				continue
			}
			c := rows[j].Cut
			if c.IsZero() {
				oldest = time.Time{}
				break
			}
			if oldest.IsZero() || c.Before(oldest) {
				oldest = c
			}
		}
		g.setLag(oldest, now)
		rows[i].Group = g
	}
}
