package statusreport

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/grouppoint"
	"github.com/drsync/drsync/statuspage"
	"github.com/drsync/drsync/vfs"
)

// GroupPoints is each consistency group's newest complete group point
// among the receiver's replicas.
func (r Receiver) GroupPoints() ([]grouppoint.GroupPoint, error) {
	pts, err := replica.AllGroupPoints(vfs.Default, r.Dir, r.VMs)
	if err != nil {
		return nil, fmt.Errorf("consistency groups: %w", err)
	}
	return grouppoint.Newest(pts), nil
}

// MemberEpochs names the epoch each member of g resumes from.
func MemberEpochs(g grouppoint.GroupPoint) string {
	var ms []string
	for _, m := range g.Members {
		ms = append(ms, fmt.Sprintf("%s epoch %d", m.VM, m.Epoch))
	}
	return strings.Join(ms, ", ")
}

// WriteGroupTable writes, under a receiver's table, each consistency
// group's newest complete group point and its RPO lag; nothing when there
// are no groups.
func WriteGroupTable(w io.Writer, gps []grouppoint.GroupPoint, now time.Time) {
	if len(gps) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSISTENCY GROUP\tGROUP POINT\tCUT\tRPO LAG\tMEMBERS RESUME")
	for _, g := range gps {
		at := g.Time()
		fmt.Fprintf(tw, "%s\tcut %d\t%s\t%s\t%s\n", g.Group, g.Cut, at.UTC().Format(time.RFC3339), now.Sub(at).Round(time.Second), MemberEpochs(g))
	}
	tw.Flush()
}

// pageGroups is the status page's consistency-group table; a replica it
// cannot read leaves its groups out rather than showing a wrong lag.
func (r Receiver) pageGroups() []statuspage.GroupPoint {
	gps, _ := r.GroupPoints()
	var out []statuspage.GroupPoint
	for _, g := range gps {
		var ms []string
		for _, m := range g.Members {
			ms = append(ms, fmt.Sprintf("%s epoch %d", m.VM, m.Epoch))
		}
		out = append(out, statuspage.GroupPoint{Group: g.Group, Cut: g.Cut, Time: g.Time(), Members: ms})
	}
	return out
}
