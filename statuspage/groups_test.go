package statuspage

import (
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/replica/grouppoint"
)

// TestPageConsistencyGroups: a receiver's page lists each consistency
// group's newest complete group point with its RPO lag; a page without
// groups has no such table.
func TestPageConsistencyGroups(t *testing.T) {
	clk := &fixedClock{t0}
	src := SourceFunc(func(now time.Time) Page {
		p := twoVMs(now)
		p.ConsistencyGroups = []grouppoint.GroupPoint{{Group: "shop", Cut: 17, Members: []grouppoint.Member{
			{VM: "db-1", Epoch: 77, Cut: t0.Add(-3 * time.Minute)}, {VM: "web-1", Epoch: 1230, Cut: t0.Add(-3*time.Minute + time.Millisecond)}}}}
		return p
	})
	_, page := get(t, New(src, Options{Now: clk.now}), "/")
	for _, want := range []string{
		`<h2>Consistency groups</h2>`,
		`<tr class="cgroup" id="cgroup-shop"><td class="name">shop</td><td class="num">cut 17</td><td class="num">2026-12-04 10:57:00 UTC</td><td class="num lag">3 min</td><td>db-1 epoch 77, web-1 epoch 1230</td></tr>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	if _, page := get(t, New(SourceFunc(twoVMs), Options{Now: clk.now}), "/"); strings.Contains(page, "Consistency groups") {
		t.Error("a page without groups shows a groups table")
	}
}
