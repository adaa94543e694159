package metrics

import (
	"cmp"
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// lag is a gauge computed at scrape time from the newest committed cut.
type lag struct {
	desc *prometheus.Desc
	now  func() time.Time
	mu   sync.Mutex
	cuts map[string]time.Time
}

func newLag(name, help string, now func() time.Time) *lag {
	return &lag{desc: prometheus.NewDesc(name, help, []string{"vm"}, nil), now: now, cuts: map[string]time.Time{}}
}

func (l *lag) set(vm string, cut time.Time) {
	l.mu.Lock()
	l.cuts[vm] = cut
	l.mu.Unlock()
}

func (l *lag) Describe(ch chan<- *prometheus.Desc) { ch <- l.desc }

func (l *lag) Collect(ch chan<- prometheus.Metric) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for vm, cut := range l.cuts {
		ch <- prometheus.MustNewConstMetric(l.desc, prometheus.GaugeValue, now.Sub(cut).Seconds(), vm)
	}
}

// Sender holds a sender's metrics.
type Sender struct {
	reg      *prometheus.Registry
	lag      *lag
	interval *prometheus.GaugeVec
	epochs   *prometheus.CounterVec
	failures *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	pages    *prometheus.CounterVec
	pause    *prometheus.HistogramVec
	goodput  *prometheus.GaugeVec
	dirty    *prometheus.GaugeVec
	plan     *prometheus.GaugeVec
	paused   *prometheus.GaugeVec
	long     *prometheus.CounterVec
	guarded  *prometheus.CounterVec
	domain   *prometheus.GaugeVec
	ramPath  *prometheus.GaugeVec

	mu      sync.Mutex
	lastCut map[string]time.Time
	resumes map[string]uint64
}

// NewSender registers a sender's metrics; now is read at scrape time.
func NewSender(now func() time.Time) *Sender {
	s := &Sender{
		reg:      prometheus.NewRegistry(),
		lag:      newLag("drsync_sender_rpo_lag_seconds", "Age of the cut of the newest epoch the receiver committed.", now),
		interval: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drsync_sender_epoch_interval_seconds", Help: "Time between the cuts of the last two committed epochs."}, []string{"vm"}),
		epochs:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drsync_sender_epochs_total", Help: "Epochs the receiver committed."}, []string{"vm"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drsync_sender_failures_total", Help: "Failed epoch attempts."}, []string{"vm"}),
		bytes:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drsync_sender_bytes_total", Help: "Bytes of committed epochs: changed (before compression), wire (sent), resent (sent again after a broken link)."}, []string{"vm", "kind"}),
		pages:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drsync_sender_ram_pages_total", Help: "Changed RAM pages by how they travelled."}, []string{"vm", "how"}),
		pause: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "drsync_sender_guest_pause_seconds", Help: "How long the guest was stopped to cut an epoch.",
			Buckets: []float64{.002, .005, .01, .015, .02, .03, .05, .1, .2, .5, 1}}, []string{"vm"}),
		goodput: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drsync_sender_goodput_bytes_per_second", Help: "Wire bytes of the last epoch over its send time."}, []string{"vm"}),
		dirty:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drsync_sender_dirty_bytes_per_second", Help: "Changed bytes of the last epoch per second of guest time it covered."}, []string{"vm"}),
		plan: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drsync_sender_plan", Help: "Adaptive epochs, the plan after the last commit: rpo_target_seconds, next_epoch_seconds, " +
			"predicted_lag_seconds, rpo_breach_predicted (1 or 0), compression_level (0 none to 3 better), planned_goodput_bytes_per_second, model_dirty_bytes_per_second."}, []string{"vm", "value"}),
		paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drsync_sender_guest_paused", Help: "1 while the protected guest is known to be paused: found paused at a cut (drsync neither cuts nor resumes it), " +
			"or left paused by a sender that died during a cut when the guard could not resume it."}, []string{"vm"}),
		long: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drsync_sender_guest_long_pauses_total", Help: "Cuts that paused the guest for longer than expected (1 s)."}, []string{"vm"}),
		guarded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drsync_sender_guest_guard_resumes_total",
			Help: "Guests the guard resumed after a sender died during a cut, since the state directory was created."}, []string{"vm"}),
		domain: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drsync_sender_domain_held",
			Help: "A libvirt domain's lifecycle state (running, shut-off, migrating, migrated; one series per VM): 1 while protection waits for the domain, 0 while it is protected."}, []string{"vm", "state"}),
		ramPath: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drsync_sender_ram_capture",
			Help: "How the last committed epoch of a live VM took the guest's RAM (path full: all of it in QEMU's migration stream; tracked: the pages written since the cut before): 1 for that path, 0 for the other."}, []string{"vm", "path"}),
		lastCut: map[string]time.Time{},
		resumes: map[string]uint64{},
	}
	s.reg.MustRegister(s.lag, s.interval, s.epochs, s.failures, s.bytes, s.pages, s.pause, s.goodput, s.dirty, s.plan, s.paused, s.long, s.guarded, s.domain, s.ramPath)
	return s
}

// Epoch is what a committed epoch reports.
type Epoch struct {
	Cut                             time.Time
	Duration                        time.Duration
	SendTime                        time.Duration // first frame to commit; 0: use Duration
	ChangedBytes, WireBytes, Resent uint64
	Pause                           time.Duration // 0 for sources that never stop a guest
	RAMPath                         string        // a live guest's: "full" or "tracked"; "" otherwise
	// RAM pages by how they travelled: data, references to disk pages,
	// references to other memory pages, zero runs.
	RAMDataPages, RAMRefPages, RAMDupPages, RAMZero int64
}

// Plan is what adaptive epochs planned after a commit.
type Plan struct {
	RPOTarget, NextInterval, PredictedLag time.Duration
	Breach                                bool
	Level                                 int
	DirtyRate, Goodput                    float64 // bytes/s, as the model has them
}

// Committed records a committed epoch of vm.
func (s *Sender) Committed(vm string, e Epoch) {
	s.lag.set(vm, e.Cut)
	s.mu.Lock()
	if prev, ok := s.lastCut[vm]; ok && e.Cut.After(prev) {
		iv := e.Cut.Sub(prev).Seconds()
		s.interval.WithLabelValues(vm).Set(iv)
		s.dirty.WithLabelValues(vm).Set(float64(e.ChangedBytes) / iv)
	}
	s.lastCut[vm] = e.Cut
	s.mu.Unlock()
	s.epochs.WithLabelValues(vm).Inc()
	s.bytes.WithLabelValues(vm, "changed").Add(float64(e.ChangedBytes))
	s.bytes.WithLabelValues(vm, "wire").Add(float64(e.WireBytes))
	s.bytes.WithLabelValues(vm, "resent").Add(float64(e.Resent))
	s.pages.WithLabelValues(vm, "data").Add(float64(e.RAMDataPages))
	s.pages.WithLabelValues(vm, "reference").Add(float64(e.RAMRefPages))
	s.pages.WithLabelValues(vm, "duplicate").Add(float64(e.RAMDupPages))
	s.pages.WithLabelValues(vm, "zero").Add(float64(e.RAMZero))
	if e.Pause > 0 {
		s.pause.WithLabelValues(vm).Observe(e.Pause.Seconds())
	}
	if e.RAMPath != "" {
		for _, p := range []string{"full", "tracked"} {
			v := 0.0
			if p == e.RAMPath {
				v = 1
			}
			s.ramPath.WithLabelValues(vm, p).Set(v)
		}
	}
	if d := cmp.Or(e.SendTime, e.Duration); d > 0 {
		s.goodput.WithLabelValues(vm).Set(float64(e.WireBytes) / d.Seconds())
	}
}

// Planned records the plan adaptive epochs made for vm's next epoch.
func (s *Sender) Planned(vm string, p Plan) {
	breach := 0.0
	if p.Breach {
		breach = 1
	}
	for k, v := range map[string]float64{
		"rpo_target_seconds": p.RPOTarget.Seconds(), "next_epoch_seconds": p.NextInterval.Seconds(),
		"predicted_lag_seconds": p.PredictedLag.Seconds(), "rpo_breach_predicted": breach, "compression_level": float64(p.Level),
		"planned_goodput_bytes_per_second": p.Goodput, "model_dirty_bytes_per_second": p.DirtyRate,
	} {
		s.plan.WithLabelValues(vm, k).Set(v)
	}
}

// GuestPaused records whether vm's guest is known to be paused.
func (s *Sender) GuestPaused(vm string, paused bool) {
	v := 0.0
	if paused {
		v = 1
	}
	s.paused.WithLabelValues(vm).Set(v)
}

// DomainState records a libvirt domain's lifecycle state, and whether
// protection waits for it.
func (s *Sender) DomainState(vm, state string, held bool) {
	v := 0.0
	if held {
		v = 1
	}
	s.domain.DeletePartialMatch(prometheus.Labels{"vm": vm})
	s.domain.WithLabelValues(vm, state).Set(v)
}

// LongPause records a cut that paused the guest for longer than expected.
func (s *Sender) LongPause(vm string) { s.long.WithLabelValues(vm).Inc() }

// GuardResumes records the guard's total of resumed guests for vm, as its
// record on disk has it (the guard runs when no sender does).
func (s *Sender) GuardResumes(vm string, total uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.guarded.WithLabelValues(vm)
	if prev := s.resumes[vm]; total > prev {
		c.Add(float64(total - prev))
		s.resumes[vm] = total
	}
}

// Failed records a failed attempt.
func (s *Sender) Failed(vm string) { s.failures.WithLabelValues(vm).Inc() }

// Handler serves the metrics.
func (s *Sender) Handler() http.Handler { return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}) }

// Receiver holds a receiver's metrics.
type Receiver struct {
	reg    *prometheus.Registry
	lag    *lag
	epochs *prometheus.CounterVec
	bytes  *prometheus.CounterVec
	hot    *prometheus.GaugeVec
}

// NewReceiver registers a receiver's metrics.
func NewReceiver(now func() time.Time) *Receiver {
	r := &Receiver{
		reg:    prometheus.NewRegistry(),
		lag:    newLag("drsync_receiver_rpo_lag_seconds", "Age of the cut of the replica's committed epoch.", now),
		epochs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drsync_receiver_epochs_total", Help: "Epochs committed."}, []string{"vm"}),
		bytes:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drsync_receiver_bytes_total", Help: "Bytes of committed epochs: wire (received), raw (after decompression)."}, []string{"vm", "kind"}),
		hot:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drsync_receiver_hot_set_bytes", Help: "Guest RAM kept pinned for a fast failover."}, []string{"vm"}),
	}
	r.reg.MustRegister(r.lag, r.epochs, r.bytes, r.hot)
	return r
}

// Committed records a committed epoch of vm.
func (r *Receiver) Committed(vm string, cut time.Time, wire, raw uint64) {
	r.lag.set(vm, cut)
	r.epochs.WithLabelValues(vm).Inc()
	r.bytes.WithLabelValues(vm, "wire").Add(float64(wire))
	r.bytes.WithLabelValues(vm, "raw").Add(float64(raw))
}

// Restored sets vm's lag from the cut of the epoch its replica held when
// the receiver started, so that the lag of a replica whose sender is gone
// keeps growing across receiver restarts instead of disappearing.
func (r *Receiver) Restored(vm string, cut time.Time) { r.lag.set(vm, cut) }

// HotSet records vm's hot-set size.
func (r *Receiver) HotSet(vm string, bytes int64) { r.hot.WithLabelValues(vm).Set(float64(bytes)) }

// Handler serves the metrics.
func (r *Receiver) Handler() http.Handler { return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{}) }

// Serve serves h at /metrics on addr until ctx ends. It returns once the
// listener is up (or failed), with the bound address.
func Serve(ctx context.Context, addr string, h http.Handler) (net.Addr, error) {
	return ServeWithPage(ctx, addr, h, nil)
}

// ServeWithPage is Serve that also serves page, if not nil, at / and
// /status: a page for people beside the metrics for Prometheus. Any other
// path is not found.
func ServeWithPage(ctx context.Context, addr string, h, page http.Handler) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	if page != nil {
		mux.Handle("/{$}", page)
		mux.Handle("/status", page)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go srv.Serve(ln) // ends when ctx closes the server
	return ln.Addr(), nil
}
