package statusreport

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/replica/grouppoint"
)

// TestGroupJSON: "drsync status --json" carries, in each member's row,
// its consistency group: on a receiver the newest complete group point
// (cut, instant, the VM's epoch, lag); on a sender the configured group
// (members, rpo) and its lag behind the oldest member's committed cut,
// flagged over the rpo. A VM in no group has no "group".
func TestGroupJSON(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	shop := &groupcut.Options{Name: "shop", Members: []string{"db", "web"}, RPO: 30 * time.Second}
	point := grouppoint.GroupPoint{Group: "shop", Cut: 7, Members: []grouppoint.Member{
		{VM: "db", Epoch: 3, Cut: now.Add(-20 * time.Second)}, {VM: "web", Epoch: 5, Cut: now.Add(-20*time.Second + time.Millisecond)}}}
	for _, tc := range []struct {
		name string
		rows []Row
		set  func(rows []Row)
		want map[string]string // VM: its row's "group" JSON, "" for none
	}{
		{
			name: "receiver",
			rows: []Row{{VM: "db"}, {VM: "mail"}, {VM: "web"}},
			set:  func(rows []Row) { AddGroupPoints(rows, []grouppoint.GroupPoint{point}, now) },
			want: map[string]string{
				"db":   `{"name":"shop","members":["db","web"],"cut":7,"cut_time":"2026-05-01T11:59:40Z","epoch":3,"rpo_lag_seconds":20}`,
				"mail": "",
				"web":  `{"name":"shop","members":["db","web"],"cut":7,"cut_time":"2026-05-01T11:59:40Z","epoch":5,"rpo_lag_seconds":20}`,
			},
		},
		{
			name: "receiver without a complete point",
			rows: []Row{{VM: "db"}, {VM: "web"}},
			set:  func(rows []Row) { AddGroupPoints(rows, nil, now) },
			want: map[string]string{"db": "", "web": ""},
		},
		{
			name: "sender within its rpo",
			rows: []Row{{VM: "db", Cut: now.Add(-10 * time.Second)}, {VM: "web", Cut: now.Add(-12 * time.Second)}, {VM: "mail", Cut: now.Add(-time.Hour)}},
			set: func(rows []Row) {
				addSenderGroups(rows, []SenderVM{{Name: "db", Group: shop}, {Name: "web", Group: shop}, {Name: "mail"}}, now)
			},
			want: map[string]string{
				"db":   `{"name":"shop","members":["db","web"],"rpo_seconds":30,"cut_time":"2026-05-01T11:59:48Z","rpo_lag_seconds":12}`,
				"web":  `{"name":"shop","members":["db","web"],"rpo_seconds":30,"cut_time":"2026-05-01T11:59:48Z","rpo_lag_seconds":12}`,
				"mail": "",
			},
		},
		{
			name: "sender over its rpo",
			rows: []Row{{VM: "db", Cut: now.Add(-10 * time.Second)}, {VM: "web", Cut: now.Add(-45 * time.Second)}},
			set: func(rows []Row) {
				addSenderGroups(rows, []SenderVM{{Name: "db", Group: shop}, {Name: "web", Group: shop}}, now)
			},
			want: map[string]string{
				"db":  `{"name":"shop","members":["db","web"],"rpo_seconds":30,"cut_time":"2026-05-01T11:59:15Z","rpo_lag_seconds":45,"over_rpo":true}`,
				"web": `{"name":"shop","members":["db","web"],"rpo_seconds":30,"cut_time":"2026-05-01T11:59:15Z","rpo_lag_seconds":45,"over_rpo":true}`,
			},
		},
		{
			name: "sender before a member's first epoch",
			rows: []Row{{VM: "db", Cut: now.Add(-10 * time.Second)}, {VM: "web"}},
			set: func(rows []Row) {
				addSenderGroups(rows, []SenderVM{{Name: "db", Group: shop}, {Name: "web", Group: shop}}, now)
			},
			want: map[string]string{
				"db":  `{"name":"shop","members":["db","web"],"rpo_seconds":30}`,
				"web": `{"name":"shop","members":["db","web"],"rpo_seconds":30}`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.set(tc.rows)
			for _, r := range tc.rows {
				b, err := json.Marshal(r)
				if err != nil {
					t.Fatal(err)
				}
				var fields map[string]json.RawMessage
				if err := json.Unmarshal(b, &fields); err != nil {
					t.Fatal(err)
				}
				if got := string(fields["group"]); got != tc.want[r.VM] {
					t.Errorf("%s: group %s\nwant %s", r.VM, got, tc.want[r.VM])
				}
			}
		})
	}
}
