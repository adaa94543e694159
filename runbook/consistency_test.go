package runbook

import (
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/replica/grouppoint"
	"github.com/drsync/drsync/vmspec"
)

// groupPts: db and app-1 cut together at cuts 1 (db 3, app-1 5) and 2
// (db 4, app-1 8); app-1 has later epochs of its own; cut 3 is only on db.
func groupPts() map[string][]grouppoint.Point {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tag := func(c uint64) *vmspec.GroupCut {
		return &vmspec.GroupCut{Group: "shop", Cut: c, Members: []string{"app-1", "db-1"}}
	}
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	return map[string][]grouppoint.Point{
		"db-1":  {{Epoch: 3, Cut: at(10), Tag: tag(1)}, {Epoch: 4, Cut: at(20), Tag: tag(2)}, {Epoch: 5, Cut: at(30), Tag: tag(3)}},
		"app-1": {{Epoch: 5, Cut: at(10), Tag: tag(1)}, {Epoch: 6, Cut: at(15)}, {Epoch: 8, Cut: at(20), Tag: tag(2)}, {Epoch: 9, Cut: at(25)}, {Epoch: 10, Cut: at(31)}},
		"app-2": {{Epoch: 2, Cut: at(29)}},
	}
}

func TestPinConsistencyGroup(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		group  string
		epoch  uint64
		before time.Time
		drop   string // VM left out of the runbook
		want   map[string]uint64
		err    string
	}{
		{name: "newest complete point", group: "shop", want: map[string]uint64{"db-1": 4, "app-1": 8}},
		{name: "before a time", group: "shop", before: t0.Add(19 * time.Minute), want: map[string]uint64{"db-1": 3, "app-1": 5}},
		{name: "before every point", group: "shop", before: t0.Add(9 * time.Minute), err: "no complete group point cut before 2026-01-01T00:09:00Z"},
		{name: "unknown group", group: "other", err: "consistency group other: no complete group point"},
		{name: "epoch number", group: "shop", epoch: 4, err: "pick the group point by time"},
		{name: "member not in the runbook", group: "shop", drop: "app-1", err: "members app-1 are not in runbook"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rb := sample()
			rb.Epoch, rb.Before = tc.epoch, tc.before
			if tc.drop != "" {
				rb.VMs = rb.VMs[1:] // app-1 is first
			}
			gp, err := rb.PinConsistencyGroup(tc.group, groupPts())
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				if rb.Pinned != nil {
					t.Fatalf("refused, yet pinned %v", rb.Pinned)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(rb.Pinned, tc.want) {
				t.Fatalf("pinned %v (cut %d), want %v", rb.Pinned, gp.Cut, tc.want)
			}
			// Members resume their pinned epoch whatever Before says;
			// other VMs keep the runbook-wide choice.
			for vm, e := range tc.want {
				if got, b := rb.point(vm); got != e || !b.IsZero() {
					t.Errorf("%s resumes %d %v, want epoch %d", vm, got, b, e)
				}
				if o, _, _ := takeoverOptions(rb, rb.vm(vm)); o.Epoch != e || !o.Before.IsZero() {
					t.Errorf("%s takeover options epoch %d before %v, want %d", vm, o.Epoch, o.Before, e)
				}
			}
			if e, b := rb.point("app-2"); e != 0 || !b.Equal(tc.before) {
				t.Errorf("app-2 resumes %d %v, want the runbook's choice", e, b)
			}
		})
	}
}
