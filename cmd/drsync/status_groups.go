package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/drsync/drsync/metrics"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/grouppoint"
	"github.com/drsync/drsync/statuspage"
	"github.com/drsync/drsync/vfs"
)

// receiverGroupPoints is each consistency group's newest complete group
// point among the receiver's replicas.
func receiverGroupPoints(cfg *ReceiverConfig) ([]grouppoint.GroupPoint, error) {
	pts, err := replica.AllGroupPoints(vfs.Default, cfg.Storage.Dir, cfg.vmNames())
	if err != nil {
		return nil, fmt.Errorf("consistency groups: %w", err)
	}
	return grouppoint.Newest(pts), nil
}

func memberEpochs(g grouppoint.GroupPoint) []string {
	var ms []string
	for _, m := range g.Members {
		ms = append(ms, fmt.Sprintf("%s epoch %d", m.VM, m.Epoch))
	}
	return ms
}

// printGroupStatus adds, under a receiver's table, each consistency
// group's newest complete group point and its RPO lag.
func printGroupStatus(w io.Writer, cfg *ReceiverConfig, now time.Time) error {
	gps, err := receiverGroupPoints(cfg)
	if err != nil || len(gps) == 0 {
		return err
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSISTENCY GROUP\tGROUP POINT\tCUT\tRPO LAG\tMEMBERS RESUME")
	for _, g := range gps {
		at := g.Time()
		fmt.Fprintf(tw, "%s\tcut %d\t%s\t%s\t%s\n", g.Group, g.Cut, at.UTC().Format(time.RFC3339), now.Sub(at).Round(time.Second), joinComma(memberEpochs(g)))
	}
	return tw.Flush()
}

func joinComma(s []string) string { return strings.Join(s, ", ") }

// groupPointsMetric reads the group points at each scrape; a replica it
// cannot read leaves its groups out rather than reporting a wrong lag.
func groupPointsMetric(cfg *ReceiverConfig) func() map[string]metrics.GroupPoint {
	return func() map[string]metrics.GroupPoint {
		out := map[string]metrics.GroupPoint{}
		gps, _ := receiverGroupPoints(cfg)
		for _, g := range gps {
			out[g.Group] = metrics.GroupPoint{Cut: g.Cut, Time: g.Time()}
		}
		return out
	}
}

// pageGroupPoints is the status page's consistency-group table.
func pageGroupPoints(cfg *ReceiverConfig) []statuspage.GroupPoint {
	gps, _ := receiverGroupPoints(cfg)
	var out []statuspage.GroupPoint
	for _, g := range gps {
		out = append(out, statuspage.GroupPoint{Group: g.Group, Cut: g.Cut, Time: g.Time(), Members: memberEpochs(g)})
	}
	return out
}
