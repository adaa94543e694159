package main

import (
	"fmt"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/statusreport"
	"github.com/drsync/drsync/vfs"
)

// pinConsistencyGroup makes failover bring group's members back from one
// complete group point, and says which epoch each VM will resume.
func pinConsistencyGroup(e *env, rb *runbook.Runbook, group string) error {
	var vms []string
	for _, v := range rb.VMs {
		vms = append(vms, v.Name)
	}
	pts, err := replica.AllGroupPoints(vfs.Default, rb.Replicas, vms)
	if err != nil {
		return fmt.Errorf("consistency group %s: %w", group, err)
	}
	gp, err := rb.PinConsistencyGroup(group, pts)
	if err != nil {
		return err
	}
	at := gp.Time()
	fmt.Fprintf(e.stdout, "consistency group %s: group point of cut %d at %s (%s old): %s\n",
		group, gp.Cut, at.UTC().Format(time.RFC3339), e.now().Sub(at).Round(time.Second), statusreport.MemberEpochs(gp))
	return nil
}
