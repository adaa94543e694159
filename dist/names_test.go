package dist

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/metrics"
)

// exportedNames returns every metric name drsync exports, histogram series
// included, read from what the sender's and the receiver's endpoints serve
// once every kind of event was reported.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	now := time.Now()
	s := metrics.NewSender(time.Now)
	s.Committed("vm", metrics.Epoch{Cut: now, Duration: time.Second, Pause: time.Millisecond})
	s.Committed("vm", metrics.Epoch{Cut: now.Add(time.Second), Duration: time.Second, Pause: time.Millisecond})
	s.Planned("vm", metrics.Plan{RPOTarget: time.Minute})
	s.Failed("vm")
	r := metrics.NewReceiver(time.Now)
	r.Committed("vm", now, 1, 1)
	r.HotSet("vm", 1)
	r.Storage(t.TempDir())
	r.Drills(func() map[string]metrics.Drill {
		return map[string]metrics.Drill{"vm": {At: now, OK: true, LastSuccess: now}}
	})
	names := map[string]bool{}
	typeLine := regexp.MustCompile(`(?m)^# TYPE (\S+) (\S+)$`)
	for _, h := range []http.Handler{s.Handler(), r.Handler()} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		for _, m := range typeLine.FindAllStringSubmatch(rec.Body.String(), -1) {
			names[m[1]] = true
			if m[2] == "histogram" {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					names[m[1]+suffix] = true
				}
			}
		}
	}
	if len(names) < 20 {
		t.Fatalf("only %d metric names exported: %v", len(names), names)
	}
	return names
}

var (
	stringLit = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	matchers  = regexp.MustCompile(`\{[^}]*\}`)
	ranges    = regexp.MustCompile(`\[[^\]]*\]`)
	// Grafana's label_values(selector, label) in variable queries.
	labelValues = regexp.MustCompile(`label_values\(([^,]*),\s*\w+\s*\)`)
	labelList   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	ident       = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	keywords    = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true}
)

// metricNames returns the metric names a PromQL expression selects: the
// identifiers left once strings, label matchers, ranges and label lists
// are cut out, other than functions (followed by a parenthesis), keywords
// and parts of numbers.
func metricNames(expr string) []string {
	e := stringLit.ReplaceAllString(expr, `""`)
	e = labelValues.ReplaceAllString(e, "($1)")
	e = matchers.ReplaceAllString(e, " ")
	e = ranges.ReplaceAllString(e, " ")
	e = labelList.ReplaceAllString(e, " ")
	var out []string
	for _, loc := range ident.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsAny(e[loc[0]-1:loc[0]], "0123456789.$") {
			continue // 1e9, $vm
		}
		if rest := strings.TrimLeft(e[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") || keywords[strings.ToLower(name)] {
			continue
		}
		out = append(out, name)
	}
	return out
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want string
	}{
		{`drsync_sender_rpo_lag_seconds{vm=~"$vm"}`, "drsync_sender_rpo_lag_seconds"},
		{`histogram_quantile(0.5, sum by (vm, le) (rate(drsync_sender_guest_pause_seconds_bucket{vm="a"}[15m])))`, "drsync_sender_guest_pause_seconds_bucket"},
		{`time() - drsync_drill_last_success_timestamp_seconds > 8 * 86400`, "drsync_drill_last_success_timestamp_seconds"},
		{`a_total > on (vm) group_left () (3 * drsync:rpo_target_seconds) unless b{x="c{d}"} offset 5m`, "a_total b drsync:rpo_target_seconds"},
		{`1e9 * label_values(x_y, vm)`, "x_y"},
	}
	for _, tc := range tests {
		got := metricNames(tc.expr)
		sort.Strings(got)
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%s: %v, want %s", tc.expr, got, tc.want)
		}
	}
}

// unknownNames returns the names exprs use that are neither exported nor
// in extra.
func unknownNames(exported map[string]bool, extra map[string]bool, exprs []string) []string {
	var bad []string
	for _, e := range exprs {
		for _, n := range metricNames(e) {
			if !exported[n] && !extra[n] {
				bad = append(bad, n+" (in "+e+")")
			}
		}
	}
	return bad
}
