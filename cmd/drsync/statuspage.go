package main

import (
	"time"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/statuspage"
	"github.com/drsync/drsync/statusreport"
)

// The status page beside the metrics reads what "drsync status" reads, the
// status files and the replicas, so it needs nothing from the daemons'
// loops and shows the same truth as the command.

// pageSampleEvery is how often the page samples each VM's lag, whether or
// not anyone looks: often enough to catch the peak before each commit.
const pageSampleEvery = 10 * time.Second

// senderPage is the status page of a sender replicating vms.
func senderPage(e *env, cfg *SenderConfig, vms []*agent.VMSettings) *statuspage.Handler {
	sel := make([]agent.VMSettings, len(vms))
	for i, v := range vms {
		sel[i] = *v
	}
	svms := cfg.statusVMs(sel)
	src := statuspage.SourceFunc(func(now time.Time) statuspage.Page { return statusreport.SenderPage(svms, now) })
	return statuspage.New(src, statuspage.Options{Now: e.now})
}

// receiverPage is the status page of a receiver keeping its replicas in store.
func receiverPage(e *env, cfg *ReceiverConfig, store replica.Store) *statuspage.Handler {
	src := statuspage.SourceFunc(func(now time.Time) statuspage.Page { return cfg.statusSource(store).Page(now) })
	return statuspage.New(src, statuspage.Options{Now: e.now})
}
