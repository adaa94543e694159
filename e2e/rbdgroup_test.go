//go:build ceph && cgo

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/testkit"
)

// TestGroupFailoverFromRBD is TestGroupFailoverToCompletePoint with the
// receiver's replicas in a Ceph pool: the members keep their group cut's
// snapshots while one of them commits later cuts of its own, and the
// group fails over from clones of the complete group point's snapshots.
func TestGroupFailoverFromRBD(t *testing.T) {
	c := testkit.CephCluster(t)
	t.Logf("Ceph cluster up (started in %v)", c.Started.Round(time.Second))
	n := time.Now().UnixNano() % 1e9
	vms := []string{fmt.Sprintf("ga-%d", n), fmt.Sprintf("gb-%d", n)}
	testGroupFailoverToCompletePoint(t, vms, func(p *pair) replica.Store {
		rbdReceiver(t, p, c, "", "", "keep_points = 1\n")
		return openRBDStore(t, c, 1, nil)
	})
}
