package main

import (
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/grouppoint"
	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/vfs"
)

// pinConsistencyGroup makes failover bring group's members back from one
// complete group point, and says which epoch each VM will resume.
func pinConsistencyGroup(e *env, rb *runbook.Runbook, group string) error {
	pts := map[string][]grouppoint.Point{}
	for _, v := range rb.VMs {
		got, err := replica.GroupPoints(vfs.Default, rb.Replicas, v.Name)
		if err != nil {
			return fmt.Errorf("consistency group %s: %w", group, err)
		}
		maps.Copy(pts, got)
	}
	gp, err := rb.PinConsistencyGroup(group, pts)
	if err != nil {
		return err
	}
	var ms []string
	for _, m := range gp.Members {
		ms = append(ms, fmt.Sprintf("%s epoch %d", m.VM, m.Epoch))
	}
	at := gp.Time()
	fmt.Fprintf(e.stdout, "consistency group %s: group point of cut %d at %s (%s old): %s\n",
		group, gp.Cut, at.UTC().Format(time.RFC3339), e.now().Sub(at).Round(time.Second), strings.Join(ms, ", "))
	return nil
}
