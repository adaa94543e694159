package metrics

import (
	"strings"
	"testing"
	"time"
)

func TestReceiverGroupPoints(t *testing.T) {
	r := NewReceiver(func() time.Time { return time.Unix(1000, 0) })
	r.GroupPoints(func() map[string]GroupPoint {
		return map[string]GroupPoint{"shop": {Cut: 17, Time: time.Unix(910, 0)}}
	})
	out := scrape(t, r.Handler())
	for _, want := range []string{
		`drsync_group_point_cut{group="shop"} 17`,
		`drsync_group_rpo_lag_seconds{group="shop"} 90`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s:\n%s", want, out)
		}
	}
}
