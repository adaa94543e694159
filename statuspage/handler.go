package statuspage

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"time"
)

// Options tune a Handler; zero fields take the defaults.
type Options struct {
	Now     func() time.Time // default time.Now
	Step    time.Duration    // one lag sample per Step; default 30 s
	Span    time.Duration    // lag history kept and charted; default 6 h
	Refresh time.Duration    // the page reloads itself this often; default 10 s
}

// Handler serves the page and keeps each VM's lag history.
type Handler struct {
	src Source
	o   Options

	mu   sync.Mutex
	hist map[string]*Ring
}

// New returns a Handler showing what src reports.
func New(src Source, o Options) *Handler {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Step <= 0 {
		o.Step = 30 * time.Second
	}
	if o.Span <= 0 {
		o.Span = 6 * time.Hour
	}
	if o.Refresh <= 0 {
		o.Refresh = 10 * time.Second
	}
	return &Handler{src: src, o: o, hist: map[string]*Ring{}}
}

// Sample takes a snapshot at now and records each VM's lag; it returns
// the snapshot and the VMs' lag histories.
func (h *Handler) Sample(now time.Time) (Page, map[string][]Sample) {
	p := h.src.Snapshot(now)
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := make(map[string]bool, len(p.VMs))
	hist := make(map[string][]Sample, len(p.VMs))
	for i := range p.VMs {
		v := &p.VMs[i]
		seen[v.Name] = true
		r := h.hist[v.Name]
		if r == nil {
			r = NewRing(h.o.Step, int(h.o.Span/h.o.Step))
			h.hist[v.Name] = r
		}
		if lag, ok := v.Lag(now); ok {
			r.Add(now, lag)
		}
		hist[v.Name] = r.Samples(now)
	}
	// A VM no longer reported takes its history with it: memory stays
	// bounded by the VMs there are.
	for name := range h.hist {
		if !seen[name] {
			delete(h.hist, name)
		}
	}
	return p, hist
}

// Run samples every interval until ctx ends, so that the charts have a
// history even when nobody looks at the page. Sampling more often than
// Step catches the lag's peaks just before commits.
func (h *Handler) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		h.Sample(h.o.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	now := h.o.Now()
	p, hist := h.Sample(now)
	var b bytes.Buffer
	if err := render(&b, p, hist, now, h.o); err != nil {
		http.Error(w, "render status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	// The page is self-contained: the browser must load nothing else.
	hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	w.Write(b.Bytes())
}
