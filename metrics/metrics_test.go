package metrics

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := Serve(ctx, "127.0.0.1:0", h)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestSenderMetrics(t *testing.T) {
	now := time.Unix(1000, 0)
	s := NewSender(func() time.Time { return now })
	s.Committed("web-1", Epoch{Cut: time.Unix(990, 0), Duration: 2 * time.Second, ChangedBytes: 100, WireBytes: 60, Pause: 12 * time.Millisecond, RAMPath: "full", RAMDataPages: 3, RAMRefPages: 2})
	s.Committed("web-1", Epoch{Cut: time.Unix(995, 0), Duration: time.Second, ChangedBytes: 50, WireBytes: 40, Resent: 4, Pause: 8 * time.Millisecond, RAMPath: "tracked", RAMZero: 1})
	s.Failed("web-1")
	s.GuestPaused("web-1", true)
	s.DomainState("web-1", "running", false)
	s.DomainState("web-1", "shut-off", true)
	s.LongPause("web-1")
	s.GuardResumes("web-1", 3)
	s.GuardResumes("web-1", 2) // an older record: never goes back
	out := scrape(t, s.Handler())
	for _, want := range []string{
		`drsync_sender_rpo_lag_seconds{vm="web-1"} 5`,
		`drsync_sender_epoch_interval_seconds{vm="web-1"} 5`,
		`drsync_sender_epochs_total{vm="web-1"} 2`,
		`drsync_sender_failures_total{vm="web-1"} 1`,
		`drsync_sender_bytes_total{kind="wire",vm="web-1"} 100`,
		`drsync_sender_bytes_total{kind="resent",vm="web-1"} 4`,
		`drsync_sender_ram_pages_total{how="reference",vm="web-1"} 2`,
		`drsync_sender_guest_pause_seconds_count{vm="web-1"} 2`,
		`drsync_sender_guest_pause_seconds_bucket{vm="web-1",le="0.01"} 1`,
		`drsync_sender_goodput_bytes_per_second{vm="web-1"} 40`,
		`drsync_sender_guest_paused{vm="web-1"} 1`,
		`drsync_sender_guest_long_pauses_total{vm="web-1"} 1`,
		`drsync_sender_guest_guard_resumes_total{vm="web-1"} 3`,
		`drsync_sender_domain_held{state="shut-off",vm="web-1"} 1`,
		`drsync_sender_ram_capture{path="tracked",vm="web-1"} 1`,
		`drsync_sender_ram_capture{path="full",vm="web-1"} 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in:\n%s", want, out)
		}
	}
	if strings.Contains(out, `state="running"`) {
		t.Errorf("a domain's former state is still exported:\n%s", out)
	}
	now = now.Add(10 * time.Second) // the lag grows between epochs
	if out := scrape(t, s.Handler()); !strings.Contains(out, `drsync_sender_rpo_lag_seconds{vm="web-1"} 15`) {
		t.Errorf("lag not computed at scrape time:\n%s", out)
	}
}

func TestReceiverMetrics(t *testing.T) {
	r := NewReceiver(func() time.Time { return time.Unix(100, 0) })
	r.Committed("db-1", time.Unix(97, 0), 10, 30)
	r.HotSet("db-1", 4096)
	out := scrape(t, r.Handler())
	for _, want := range []string{
		`drsync_receiver_rpo_lag_seconds{vm="db-1"} 3`,
		`drsync_receiver_epochs_total{vm="db-1"} 1`,
		`drsync_receiver_bytes_total{kind="raw",vm="db-1"} 30`,
		`drsync_receiver_hot_set_bytes{vm="db-1"} 4096`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in:\n%s", want, out)
		}
	}
}

func TestReceiverStorageAndDrills(t *testing.T) {
	r := NewReceiver(time.Now)
	r.Storage(t.TempDir())
	r.Drills(func() map[string]Drill {
		return map[string]Drill{
			"db-1":  {At: time.Unix(2000, 0), OK: true, LastSuccess: time.Unix(2000, 0)},
			"web-1": {At: time.Unix(3000, 0), OK: false, LastSuccess: time.Unix(1000, 0)},
			"new-1": {At: time.Unix(3000, 0), OK: false},
		}
	})
	out := scrape(t, r.Handler())
	for _, want := range []string{
		`drsync_drill_last_result{vm="db-1"} 1`,
		`drsync_drill_last_result{vm="web-1"} 0`,
		`drsync_drill_last_result{vm="new-1"} 0`,
		`drsync_drill_last_success_timestamp_seconds{vm="db-1"} 2000`,
		`drsync_drill_last_success_timestamp_seconds{vm="web-1"} 1000`,
		`drsync_drill_last_run_timestamp_seconds{vm="web-1"} 3000`,
		"drsync_receiver_storage_available_bytes ",
		"drsync_receiver_storage_size_bytes ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in:\n%s", want, out)
		}
	}
	if strings.Contains(out, `drsync_drill_last_success_timestamp_seconds{vm="new-1"}`) {
		t.Errorf("a VM whose drills never passed has a last success:\n%s", out)
	}
	var avail, size float64
	for _, line := range strings.Split(out, "\n") {
		fmt.Sscanf(line, "drsync_receiver_storage_available_bytes %g", &avail)
		fmt.Sscanf(line, "drsync_receiver_storage_size_bytes %g", &size)
	}
	if avail <= 0 || size < avail {
		t.Errorf("storage: available %g, size %g", avail, size)
	}

	// Storage that cannot be read leaves its metrics out, not the scrape.
	r = NewReceiver(time.Now)
	r.Storage("/nonexistent/storage")
	r.Committed("db-1", time.Now(), 1, 1)
	if out := scrape(t, r.Handler()); strings.Contains(out, "storage_") || !strings.Contains(out, "drsync_receiver_epochs_total") {
		t.Errorf("unreadable storage:\n%s", out)
	}
}

// A restarted receiver reports the lag of a replica nothing was committed
// to since, growing at every scrape.
func TestReceiverRestoredLag(t *testing.T) {
	now := time.Unix(1000, 0)
	r := NewReceiver(func() time.Time { return now })
	r.Restored("db-1", time.Unix(400, 0))
	if out := scrape(t, r.Handler()); !strings.Contains(out, `drsync_receiver_rpo_lag_seconds{vm="db-1"} 600`) || strings.Contains(out, "drsync_receiver_epochs_total") {
		t.Errorf("restored lag:\n%s", out)
	}
	now = now.Add(time.Minute)
	if out := scrape(t, r.Handler()); !strings.Contains(out, `drsync_receiver_rpo_lag_seconds{vm="db-1"} 660`) {
		t.Errorf("restored lag does not grow:\n%s", out)
	}
}

// TestServeWithPage: the page is at / and /status beside /metrics; any
// other path, and / without a page, is not found.
func TestServeWithPage(t *testing.T) {
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "the page") })
	met := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "the metrics") })
	tests := []struct {
		name string
		page http.Handler
		path string
		code int
		body string
	}{
		{"root", page, "/", 200, "the page"},
		{"status", page, "/status", 200, "the page"},
		{"metrics", page, "/metrics", 200, "the metrics"},
		{"elsewhere", page, "/favicon.ico", 404, ""},
		{"below status", page, "/status/x", 404, ""},
		{"no page", nil, "/", 404, ""},
		{"no page, metrics", nil, "/metrics", 200, "the metrics"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			addr, err := ServeWithPage(ctx, "127.0.0.1:0", met, tc.page)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.Get("http://" + addr.String() + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code || (tc.body != "" && string(b) != tc.body) {
				t.Errorf("GET %s: %d %q, want %d %q", tc.path, resp.StatusCode, b, tc.code, tc.body)
			}
		})
	}
}
