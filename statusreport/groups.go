package statusreport

import (
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/grouppoint"
	"github.com/drsync/drsync/vfs"
)

// pageGroups is the status page's consistency-group table; a replica it
// cannot read leaves its groups out rather than showing a wrong lag.
func (r Receiver) pageGroups() []grouppoint.GroupPoint {
	gps, _ := replica.NewestGroupPoints(vfs.Default, r.Dir, r.VMs)
	return gps
}
