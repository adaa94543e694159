package serve

import (
	"github.com/drsync/drsync/metrics"
	"github.com/drsync/drsync/replica"
)

// groupPoints reads, at each scrape, the newest complete group point of
// each consistency group among the replicas of vms. A replica it cannot
// read leaves its groups out rather than reporting a wrong lag.
func groupPoints(store replica.Store, vms []string) func() map[string]metrics.GroupPoint {
	return func() map[string]metrics.GroupPoint {
		out := map[string]metrics.GroupPoint{}
		gps, _ := replica.NewestGroupPoints(store, vms)
		for _, g := range gps {
			out[g.Group] = metrics.GroupPoint{Cut: g.Cut, Time: g.Time()}
		}
		return out
	}
}
