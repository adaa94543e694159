package main

import (
	"github.com/drsync/drsync/metrics"
)

// groupPointsMetric reads the group points at each scrape; a replica it
// cannot read leaves its groups out rather than reporting a wrong lag.
func groupPointsMetric(cfg *ReceiverConfig) func() map[string]metrics.GroupPoint {
	return func() map[string]metrics.GroupPoint {
		out := map[string]metrics.GroupPoint{}
		gps, _ := cfg.statusSource().GroupPoints()
		for _, g := range gps {
			out[g.Group] = metrics.GroupPoint{Cut: g.Cut, Time: g.Time()}
		}
		return out
	}
}
