package statuspage

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"
)

var t0 = time.Date(2026, 12, 4, 11, 0, 0, 0, time.UTC)

// twoVMs is one healthy VM and one whose last drill failed.
func twoVMs(now time.Time) Page {
	return Page{Role: "receiver", VMs: []VM{
		{Name: "web-1", Epoch: 1234, Cut: now.Add(-42 * time.Second), RPOTarget: 2 * time.Minute,
			LastPause: 12300 * time.Microsecond, Goodput: 12.5e6, Points: 5,
			Drill: &Drill{Epoch: 1200, At: now.Add(-3 * time.Hour), OK: true, Detail: "started from epoch 1200; every check passed"}},
		{Name: "db-1", Epoch: 77, Cut: now.Add(-90 * time.Second), Points: 2,
			Drill: &Drill{Epoch: 70, At: now.Add(-20 * time.Minute), OK: false, Detail: "step db-1/check did not pass: port 5432 closed"}},
	}}
}

// fixedClock is a clock tests move by hand.
type fixedClock struct{ t time.Time }

func (c *fixedClock) now() time.Time { return c.t }

func get(t *testing.T, h http.Handler, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	resp := rec.Result()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// parse returns the document's rows by VM (the id of each tr is vm-NAME)
// and every element, for checks over the whole page.
func parse(t *testing.T, page string) (rows map[string]*html.Node, all []*html.Node) {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(page))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	rows = map[string]*html.Node{}
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			all = append(all, n)
			if n.Data == "tr" && strings.HasPrefix(attr(n, "id"), "vm-") {
				rows[strings.TrimPrefix(attr(n, "id"), "vm-")] = n
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	return rows, all
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// text is n's text, whitespace collapsed.
func text(n *html.Node) string {
	var b strings.Builder
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data + " ")
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return strings.Join(strings.Fields(b.String()), " ")
}

// cell returns the text of the td of class cls in row.
func cell(row *html.Node, cls string) (string, bool) {
	for c := row.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode && c.Data == "td" && strings.Contains(" "+attr(c, "class")+" ", " "+cls+" ") {
			return text(c), true
		}
	}
	return "", false
}

func TestPageRows(t *testing.T) {
	clk := &fixedClock{t0}
	h := New(SourceFunc(twoVMs), Options{Now: clk.now})
	resp, page := get(t, h, "/")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	rows, _ := parse(t, page)
	want := map[string]map[string]string{
		"web-1": {"name": "web-1", "group": "", "epoch": "1234", "cut": "2026-12-04 10:59:18 UTC 42 s ago", "lag": "42 s / 2 min",
			"pause": "12 ms", "goodput": "100 Mbit/s", "points": "5", "drill": "passed epoch 1200 2026-12-04 08:00:00 UTC 3 h ago"},
		"db-1": {"name": "db-1", "epoch": "77", "cut": "2026-12-04 10:58:30 UTC 1 min 30 s ago", "lag": "1 min 30 s / –",
			"pause": "–", "goodput": "–", "points": "2",
			"drill": "FAILED epoch 70 2026-12-04 10:40:00 UTC 20 min ago step db-1/check did not pass: port 5432 closed"},
	}
	if len(rows) != len(want) {
		t.Fatalf("%d VM rows, want %d", len(rows), len(want))
	}
	for vm, cells := range want {
		row := rows[vm]
		if row == nil {
			t.Errorf("no row for %s", vm)
			continue
		}
		for cls, w := range cells {
			got, ok := cell(row, cls)
			if !ok || got != w {
				t.Errorf("%s %s: got %q (found %v), want %q", vm, cls, got, ok, w)
			}
		}
	}
	if c := attr(rows["db-1"], "class"); !strings.Contains(c, "bad") {
		t.Errorf("db-1's row has class %q, want it marked bad", c)
	}
	if c := attr(rows["web-1"], "class"); strings.Contains(c, "bad") {
		t.Errorf("web-1's row has class %q, want it not marked bad", c)
	}
}

func TestPageBanner(t *testing.T) {
	h := New(SourceFunc(twoVMs), Options{Now: (&fixedClock{t0}).now})
	_, page := get(t, h, "/")
	_, all := parse(t, page)
	var banner string
	for _, n := range all {
		if attr(n, "id") == "trouble" {
			banner = text(n)
		}
	}
	if !strings.Contains(banner, "db-1") || !strings.Contains(banner, "last failover drill FAILED at 2026-12-04 10:40:00 UTC: step db-1/check did not pass") {
		t.Errorf("banner %q does not tell of db-1's failed drill", banner)
	}
	if strings.Contains(banner, "web-1") {
		t.Errorf("banner %q names the healthy web-1", banner)
	}
	var fails int
	for _, n := range all {
		if n.Data == "span" && attr(n, "class") == "fail" {
			fails++
		}
	}
	if fails != 1 {
		t.Errorf("%d failed-drill markers, want 1", fails)
	}

	healthy := New(SourceFunc(func(now time.Time) Page { p := twoVMs(now); p.VMs = p.VMs[:1]; return p }), Options{Now: (&fixedClock{t0}).now})
	_, page = get(t, healthy, "/")
	if strings.Contains(page, `id="trouble"`) || !strings.Contains(page, "All 1 VM(s) healthy") {
		t.Errorf("a healthy page has a trouble banner or lacks the all-healthy line:\n%s", page)
	}
}

// TestPageSelfContained: the page must load nothing from anywhere (a DR
// site may have no internet, and the page must not leak who looks at it).
func TestPageSelfContained(t *testing.T) {
	h := New(SourceFunc(twoVMs), Options{Now: (&fixedClock{t0}).now})
	resp, page := get(t, h, "/")
	_, all := parse(t, page)
	for _, n := range all {
		switch n.Data {
		case "script", "link", "iframe", "img", "object", "embed":
			t.Errorf("the page has a <%s> element", n.Data)
		}
		for _, a := range n.Attr {
			k := a.Key
			if k != "src" && k != "href" && k != "srcset" && k != "action" && k != "xlink:href" && a.Namespace != "xlink" {
				continue
			}
			v := strings.ToLower(strings.TrimSpace(a.Val))
			if strings.HasPrefix(v, "http://") || strings.HasPrefix(v, "https://") || strings.HasPrefix(v, "//") || strings.Contains(v, ":") {
				t.Errorf("<%s %s=%q> points outside the page's server", n.Data, k, a.Val)
			}
		}
		if n.Data == "style" && strings.Contains(text(n), "url(") {
			t.Errorf("the style sheet loads a url(): %s", text(n))
		}
	}
	var refresh bool
	for _, n := range all {
		if n.Data == "meta" && strings.EqualFold(attr(n, "http-equiv"), "refresh") && attr(n, "content") == "10" {
			refresh = true
		}
	}
	if !refresh {
		t.Error("no <meta http-equiv=refresh content=10>")
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q, want default-src 'none'", csp)
	}
}

func TestPageEscapes(t *testing.T) {
	src := SourceFunc(func(now time.Time) Page {
		return Page{VMs: []VM{{Name: "vm-x", Failures: 3, LastError: `dial: <script>alert(1)</script> & "quotes"`}}}
	})
	_, page := get(t, New(src, Options{Now: (&fixedClock{t0}).now}), "/")
	if strings.Contains(page, "<script>") {
		t.Fatal("an error message reached the page unescaped")
	}
	if !strings.Contains(page, "3 failed attempt(s) since the last committed epoch: dial: &lt;script&gt;") {
		t.Errorf("the banner lacks the escaped error:\n%s", page)
	}
}

func TestTrouble(t *testing.T) {
	now := t0
	tests := []struct {
		name string
		vm   VM
		want []string
	}{
		{"healthy", VM{Cut: now.Add(-10 * time.Second), RPOTarget: time.Minute, Drill: &Drill{OK: true}}, nil},
		{"no epoch yet", VM{}, nil},
		{"lag over the target", VM{Cut: now.Add(-3 * time.Minute), RPOTarget: 2 * time.Minute},
			[]string{"RPO lag 3 min exceeds the target 2 min"}},
		{"breach predicted", VM{Cut: now.Add(-10 * time.Second), RPOTarget: time.Minute, BreachPredicted: true},
			[]string{"RPO target 1 min will be missed at the measured rates"}},
		{"failures", VM{Failures: 2, LastError: "connection refused"},
			[]string{"2 failed attempt(s) since the last committed epoch: connection refused"}},
		{"error without a count", VM{LastError: "stream reset"}, []string{"failing: stream reset"}},
		{"guest paused", VM{GuestPaused: "paused by someone else", PausedSince: now.Add(-time.Minute)},
			[]string{"guest paused since 2026-12-04 10:59:00 UTC: paused by someone else"}},
		{"domain held", VM{DomainHeld: "domain migrating (outgoing) since 10:59:00 UTC; protection paused"},
			[]string{"domain migrating (outgoing) since 10:59:00 UTC; protection paused"}},
		{"failed drill", VM{Drill: &Drill{At: now.Add(-time.Hour), Detail: "no boot"}},
			[]string{"last failover drill FAILED at 2026-12-04 10:00:00 UTC: no boot"}},
		{"several, most urgent first", VM{GuestPaused: "x", Failures: 1, Drill: &Drill{At: now}},
			[]string{"guest paused: x", "1 failed attempt(s) since the last committed epoch", "last failover drill FAILED at 2026-12-04 11:00:00 UTC"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.vm.Trouble(now)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestUnits(t *testing.T) {
	tests := []struct{ got, want string }{
		{duration(1500 * time.Millisecond), "1.5 s"},
		{duration(42 * time.Second), "42 s"},
		{duration(4*time.Minute + 5*time.Second), "4 min 05 s"},
		{duration(2*time.Hour + 3*time.Minute), "2 h 03 min"},
		{duration(50 * time.Hour), "2 d 02 h"},
		{pause(2500 * time.Microsecond), "2.5 ms"},
		{pause(120 * time.Millisecond), "120 ms"},
		{pause(1500 * time.Millisecond), "1.5 s"},
		{rate(100), "800 bit/s"},
		{rate(1500), "12 kbit/s"},
		{rate(12.5e6), "100 Mbit/s"},
		{rate(1.25e9 / 8), "1.25 Gbit/s"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// TestChartHistory: samples taken over time, by requests and by Run, draw
// one line per unbroken run, and a VM gone from the source loses its
// history.
func TestChartHistory(t *testing.T) {
	clk := &fixedClock{t0}
	vms := []string{"web-1"}
	src := SourceFunc(func(now time.Time) Page {
		var p Page
		for _, n := range vms {
			// The cut is always 20 s old, so each step holds 20 s.
			p.VMs = append(p.VMs, VM{Name: n, Cut: now.Add(-20 * time.Second), RPOTarget: time.Minute})
		}
		return p
	})
	h := New(src, Options{Now: clk.now})
	for i := range 10 {
		clk.t = t0.Add(time.Duration(i) * 30 * time.Second)
		h.Sample(clk.t)
	}
	clk.t = clk.t.Add(10 * time.Minute) // a gap: nothing sampled
	_, page := get(t, h, "/")
	_, all := parse(t, page)
	var lines []string
	var target bool
	for _, n := range all {
		switch {
		case n.Data == "polyline":
			lines = append(lines, attr(n, "points"))
		case n.Data == "line" && attr(n, "class") == "target":
			target = true
		}
	}
	// 10 samples 30 s apart fall in 4 columns of 108 s (6 h over 200 px).
	if len(lines) != 2 || len(strings.Fields(lines[0])) != 4 || len(strings.Fields(lines[1])) != 1 {
		t.Errorf("polylines %q, want one of 4 points and one of 1 after the gap", lines)
	}
	if !target {
		t.Error("no target line in the chart")
	}

	vms = []string{"db-1"}
	p, hist := h.Sample(clk.t)
	if len(p.VMs) != 1 || len(hist["db-1"]) != 1 || len(h.hist) != 1 {
		t.Errorf("after web-1 left: %d VMs, db-1 history %v, %d histories kept", len(p.VMs), hist["db-1"], len(h.hist))
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h.Run(ctx, time.Hour) // samples once, then sees ctx is done
}

func TestMethodNotAllowed(t *testing.T) {
	h := New(SourceFunc(twoVMs), Options{})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(nil)))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: status %d, want 405", rec.Code)
	}
}

// TestChartPeaks: a pixel column shows the largest lag of its samples, on
// a scale whose top reads well and holds both the lag and the target.
func TestChartPeaks(t *testing.T) {
	o := Options{Step: 30 * time.Second, Span: 6 * time.Hour}
	tests := []struct {
		name         string
		hist         []Sample
		target       time.Duration
		lines        []string
		top, targetY string
		dotX, dotY   string
	}{
		// 6 h over 200 px: the last column holds the last 108 s; the
		// scale tops at 1 min (50 s > 1.2 x 30 s), the plot is y 2..44.
		{name: "peak of a column", target: 30 * time.Second,
			hist:  []Sample{{t0.Add(-80 * time.Second), 10 * time.Second}, {t0.Add(-50 * time.Second), 50 * time.Second}, {t0.Add(-20 * time.Second), 20 * time.Second}},
			lines: []string{"199,9.0"}, top: "1 min", targetY: "23.0", dotX: "199", dotY: "30.0"},
		{name: "target sets the scale", target: 10 * time.Minute,
			hist:  []Sample{{t0.Add(-3 * time.Hour), time.Minute}, {t0.Add(-3*time.Hour + 30*time.Second), time.Minute}},
			lines: []string{"100,41.2"}, top: "15 min", targetY: "16.0", dotX: "100", dotY: "41.2"},
		{name: "no samples", lines: nil, top: "1.0 s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := chart("vm", tc.hist, tc.target, t0, o)
			if strings.Join(c.Lines, "|") != strings.Join(tc.lines, "|") || c.Top != tc.top || c.TargetY != tc.targetY || c.DotX != tc.dotX || c.DotY != tc.dotY {
				t.Errorf("got lines %q top %q target y %q dot %s,%s\nwant lines %q top %q target y %q dot %s,%s",
					c.Lines, c.Top, c.TargetY, c.DotX, c.DotY, tc.lines, tc.top, tc.targetY, tc.dotX, tc.dotY)
			}
		})
	}
}

// TestConcurrentRequests: requests and the background sampler share the
// history (run under -race).
func TestConcurrentRequests(t *testing.T) {
	h := New(SourceFunc(twoVMs), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { h.Run(ctx, time.Millisecond); close(ran) }()
	srv := httptest.NewServer(h)
	defer srv.Close()
	done := make(chan error, 4)
	for range 4 {
		go func() {
			for range 20 {
				resp, err := http.Get(srv.URL)
				if err != nil {
					done <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			done <- nil
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	cancel()
	<-ran
}
