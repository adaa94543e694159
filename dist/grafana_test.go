package dist

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// dashboardExprs returns every PromQL expression of a Grafana dashboard:
// panel targets and variable queries.
func dashboardExprs(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			// Variable queries are "query": "..." or "query": {"query": "..."}.
			if s, ok := x.(string); ok && (k == "expr" || k == "definition" || k == "query") {
				out = append(out, s)
			}
			out = append(out, dashboardExprs(x)...)
		}
	case []any:
		for _, x := range v {
			out = append(out, dashboardExprs(x)...)
		}
	}
	return out
}

// TestDashboard parses the Grafana dashboard and checks that every
// expression uses only metric names drsync exports, and that it shows what
// an operator looks for.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/drsync.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int            `json:"id"`
			Title   string         `json:"title"`
			Type    string         `json:"type"`
			GridPos map[string]int `json:"gridPos"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana/drsync.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard without title, uid or panels")
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if p.Title == "" || p.Type == "" || p.GridPos["w"] == 0 || p.GridPos["h"] == 0 || len(p.Targets) == 0 {
			t.Errorf("panel %d %q: title, type, size or targets missing", p.ID, p.Title)
		}
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" {
				t.Errorf("panel %q: a target without expr or refId", p.Title)
			}
		}
	}

	var raw any
	json.Unmarshal(b, &raw)
	exprs := dashboardExprs(raw)
	exported := exportedNames(t)
	for _, bad := range unknownNames(exported, nil, exprs) {
		t.Errorf("dashboard uses a metric drsync does not export: %s", bad)
	}
	used := map[string]bool{}
	for _, e := range exprs {
		for _, n := range metricNames(e) {
			used[n] = true
		}
	}
	for _, want := range []string{
		"drsync_sender_rpo_lag_seconds", "drsync_sender_plan", "drsync_sender_epoch_interval_seconds",
		"drsync_sender_goodput_bytes_per_second", "drsync_sender_guest_pause_seconds_bucket", "drsync_sender_bytes_total",
		"drsync_sender_failures_total", "drsync_drill_last_result", "drsync_receiver_storage_available_bytes",
	} {
		if !used[want] {
			t.Errorf("dashboard does not show %s", want)
		}
	}
}
