package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// GroupPoint is a consistency group's newest complete group point: the
// cut every member has committed, and its instant.
type GroupPoint struct {
	Cut  uint64
	Time time.Time
}

// groupPoints reports group points, read at scrape time from source.
type groupPoints struct {
	source   func() map[string]GroupPoint
	now      func() time.Time
	cut, lag *prometheus.Desc
}

func (g *groupPoints) Describe(ch chan<- *prometheus.Desc) { ch <- g.cut; ch <- g.lag }

func (g *groupPoints) Collect(ch chan<- prometheus.Metric) {
	now := g.now()
	for name, p := range g.source() {
		ch <- prometheus.MustNewConstMetric(g.cut, prometheus.GaugeValue, float64(p.Cut), name)
		ch <- prometheus.MustNewConstMetric(g.lag, prometheus.GaugeValue, now.Sub(p.Time).Seconds(), name)
	}
}

// GroupPoints exports, per consistency group, its newest complete group
// point and that point's RPO lag: how far back a failover of the whole
// group would go, which can be more than any member's own lag.
func (r *Receiver) GroupPoints(source func() map[string]GroupPoint) {
	r.reg.MustRegister(&groupPoints{
		source: source, now: r.lag.now,
		cut: prometheus.NewDesc("drsync_group_point_cut", "Cut number of the consistency group's newest complete group point.", []string{"group"}, nil),
		lag: prometheus.NewDesc("drsync_group_rpo_lag_seconds", "Age of the consistency group's newest complete group point.", []string{"group"}, nil),
	})
}
