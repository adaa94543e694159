package epochctl

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// This file is a deterministic simulation of a guest, a sender and a WAN
// link, with the controller choosing the epochs. Time is a float64 of
// seconds since the start; nothing sleeps, so hours of guest time take
// milliseconds.

var simBase = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func simTime(s float64) time.Time { return simBase.Add(time.Duration(s * 1e9)) }

// simGuest dirties memory and disk. A hot working set of chunks is
// rewritten at random, so overwrites within an epoch coalesce the way they
// do in a real guest (the distinct chunks written in T seconds saturate at
// the working set); a cold stream writes data that is never rewritten
// (logs, new files) and grows linearly.
type simGuest struct {
	chunk    float64  // bytes per tracked chunk
	stamp    []uint32 // per hot chunk: the epoch that last dirtied it
	epoch    uint32
	hotRate  float64 // hot chunk writes per second
	coldRate float64 // bytes per second
	carry    float64
	distinct int
	cold     float64
	rng      *rand.Rand
}

func newSimGuest(hotBytes, hotWriteRate, coldRate float64, seed uint64) *simGuest {
	const chunk = 256 << 10
	return &simGuest{
		chunk:    chunk,
		stamp:    make([]uint32, int(hotBytes/chunk)),
		epoch:    1,
		hotRate:  hotWriteRate / chunk,
		coldRate: coldRate,
		rng:      rand.New(rand.NewPCG(seed, 0x5eed)),
	}
}

// run lets the guest write for dt seconds.
func (g *simGuest) run(dt float64) {
	n := g.hotRate*dt + g.carry
	k := int(n)
	g.carry = n - float64(k)
	for range k {
		i := g.rng.IntN(len(g.stamp))
		if g.stamp[i] != g.epoch {
			g.stamp[i] = g.epoch
			g.distinct++
		}
	}
	g.cold += g.coldRate * dt
}

// cut ends the epoch and returns the bytes it changed.
func (g *simGuest) cut() int64 {
	b := int64(float64(g.distinct)*g.chunk + g.cold)
	g.epoch++
	g.distinct, g.cold = 0, 0
	return b
}

// simSegment is the link's bandwidth from a time on.
type simSegment struct{ from, bw float64 }

// simLink carries bytes at a piecewise constant bandwidth.
type simLink struct {
	segs   []simSegment // by from, the first from 0
	rtt    float64
	cap    float64 // the sender's rate limit, 0 = none
	jitter float64 // ± fraction on each transfer
}

func (l *simLink) bwAt(t float64) float64 {
	bw := l.segs[0].bw
	for _, s := range l.segs {
		if s.from <= t {
			bw = s.bw
		}
	}
	if l.cap > 0 {
		bw = min(bw, l.cap)
	}
	return bw
}

// transfer returns how long sending n bytes from t0 takes.
func (l *simLink) transfer(n, t0 float64) float64 {
	t := t0
	for n > 0 {
		bw := l.bwAt(t)
		next := math.Inf(1)
		for _, s := range l.segs {
			if s.from > t {
				next = s.from
				break
			}
		}
		if t+n/bw <= next {
			return t + n/bw - t0
		}
		n -= (next - t) * bw
		t = next
	}
	return t - t0
}

// simCodec is how compressible the guest's data is and what compressing it
// costs at each level.
type simCodec struct {
	ratio [NumLevels]float64 // wire/raw
	speed [NumLevels]float64 // raw bytes per CPU second, 0 = free
	dedup float64            // fraction of changed bytes sent as references
	noise float64            // ± fraction on each epoch's ratio
}

var defaultCodec = simCodec{
	ratio: [NumLevels]float64{1.0, 0.50, 0.42, 0.35},
	speed: [NumLevels]float64{0, 600e6, 150e6, 40e6},
	dedup: 0.05,
	noise: 0.05,
}

type simSetup struct {
	cfg      Config
	guest    *simGuest
	link     simLink
	codec    simCodec
	full     float64 // bytes of the first, full epoch
	overhead float64 // seconds per epoch besides sending and the commit round trip
	duration float64 // seconds of guest time
	seed     uint64
	// noCPU leaves CPUTime out of the observations.
	noCPU bool
	// workload, if set, changes the guest at a time: it is called before
	// each epoch is cut.
	workload func(t float64, g *simGuest)
}

type simEpoch struct {
	cut, committed float64
	interval       float64
	changed        int64
	wire           int64
	level          Level
	peakLag        float64 // committed − cut of the previous committed epoch
	dec            Decision
}

type simResult struct {
	epochs []simEpoch
	target float64
}

// crossAt is the first instant after from at which the simulated lag
// exceeded the target, or -1.
func (r *simResult) crossAt(from float64) float64 {
	for i := 1; i < len(r.epochs); i++ {
		prev, e := r.epochs[i-1], r.epochs[i]
		if at := prev.cut + r.target; e.peakLag > r.target && at >= from {
			return at
		}
	}
	return -1
}

// firstBreach is the first decision after from that reported a breach, or
// -1.
func (r *simResult) firstBreach(from float64) float64 {
	for _, e := range r.epochs {
		if e.committed >= from && e.dec.Breach {
			return e.committed
		}
	}
	return -1
}

func runSim(t testing.TB, s simSetup) simResult {
	t.Helper()
	ctl, err := New(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := ctl.Config()
	rng := rand.New(rand.NewPCG(s.seed, 42))
	jit := func(f float64) float64 { return 1 + f*(2*rng.Float64()-1) }
	res := simResult{target: seconds(cfg.RPOTarget)}
	level := cfg.StartLevel
	next, lastCut, committedCut := 0.0, -1.0, -1.0
	for next < s.duration {
		cut := next
		if s.workload != nil {
			s.workload(cut, s.guest)
		}
		e := simEpoch{cut: cut, level: level}
		if lastCut >= 0 {
			e.interval = cut - lastCut
			s.guest.run(e.interval)
			e.changed = s.guest.cut()
		} else {
			e.changed = int64(s.full) // 0: the replica starts in step
		}
		changed := float64(e.changed)
		deduped := changed * s.codec.dedup
		raw := changed - deduped
		e.wire = int64(raw * s.codec.ratio[level] * jit(s.codec.noise))
		cpu := 0.0
		if sp := s.codec.speed[level]; sp > 0 {
			cpu = raw / sp
		}
		start := cut + s.overhead/2
		link := s.link.transfer(float64(e.wire), start) * jit(s.link.jitter)
		send := max(link, cpu)
		e.committed = start + send + s.link.rtt + s.overhead/2
		if committedCut >= 0 {
			e.peakLag = e.committed - committedCut
		}
		o := Observation{
			Cut: simTime(cut), Committed: simTime(e.committed), Interval: time.Duration(e.interval * 1e9),
			ChangedBytes: e.changed, DedupedBytes: int64(deduped), WireBytes: e.wire,
			SendTime: time.Duration(send * 1e9), CPUTime: time.Duration(cpu * 1e9), Level: level,
		}
		if s.noCPU {
			o.CPUTime = 0
		}
		ctl.Observe(o)
		e.dec = ctl.Decide(simTime(e.committed))
		checkDecision(t, cfg, e.dec, simTime(cut), simTime(e.committed))
		res.epochs = append(res.epochs, e)
		level = e.dec.Level
		next = max(e.committed, seconds(e.dec.NextCut.Sub(simBase)))
		lastCut, committedCut = cut, cut
	}
	return res
}

// checkDecision holds for every decision, simulated or fuzzed.
func checkDecision(t testing.TB, cfg Config, d Decision, lastCut, now time.Time) {
	t.Helper()
	if d.Interval < cfg.MinInterval || d.Interval > cfg.MaxInterval {
		t.Fatalf("interval %s outside [%s, %s]: %s", d.Interval, cfg.MinInterval, cfg.MaxInterval, d.Reason)
	}
	if !lastCut.IsZero() && !d.NextCut.After(lastCut) {
		t.Fatalf("next cut %s not after the last cut %s", d.NextCut, lastCut)
	}
	if d.NextCut.Before(now) {
		t.Fatalf("next cut %s before now %s", d.NextCut, now)
	}
	if d.PredictedLag < 0 || !d.Level.Valid() || d.Reason == "" || strings.Contains(d.Reason, "\n") {
		t.Fatalf("bad decision %+v", d)
	}
	// The flag, the kind and the reason speak of the same plan.
	if d.Breach != strings.HasPrefix(d.Reason, "breach") || d.Kind.Breach() && !d.Breach {
		t.Fatalf("breach %v, kind %s, reason %q", d.Breach, d.Kind, d.Reason)
	}
	goal := time.Duration((1 - cfg.Margin) * float64(cfg.RPOTarget))
	if off := d.PredictedLag - goal; !d.Kind.Breach() && (off > time.Millisecond || off < -time.Millisecond) && d.Breach != (off > 0) {
		t.Fatalf("breach %v with kind %s and predicted lag %s against the goal %s: %s", d.Breach, d.Kind, d.PredictedLag, goal, d.Reason)
	}
	e := d.Estimates
	for _, f := range []float64{e.Goodput, e.MeasuredGoodput, e.DirtyA, e.DirtyB, e.DirtyRate, e.DedupRatio,
		e.Changed, e.Wire, e.WireRate, e.Busy, e.LagGrowth,
		e.CompressionRatio[0], e.CompressionRatio[1], e.CompressionRatio[2], e.CompressionRatio[3],
		e.CompressSpeed[0], e.CompressSpeed[1], e.CompressSpeed[2], e.CompressSpeed[3]} {
		if math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			t.Fatalf("estimate not a finite non-negative number: %+v", e)
		}
	}
	for _, p := range d.Plans {
		if math.IsNaN(p.Busy) || math.IsInf(p.Busy, 0) || math.IsNaN(p.CPUShare) || math.IsNaN(p.LagGrowth) {
			t.Fatalf("plan not finite: %+v", p)
		}
	}
	if cfg.BandwidthCap > 0 && e.Goodput > cfg.BandwidthCap {
		t.Fatalf("plans with goodput %v above the cap %v", e.Goodput, cfg.BandwidthCap)
	}
}

// window summarises the epochs committed in [from, to).
type window struct {
	n              int
	maxLag, meanIv float64
	minIv, maxIv   float64
	breaches       int
	levels         map[Level]int
	lastLevel      Level
}

func (r *simResult) window(from, to float64) window {
	w := window{minIv: math.Inf(1), levels: map[Level]int{}}
	for _, e := range r.epochs {
		if e.committed < from || e.committed >= to || e.interval == 0 {
			continue
		}
		w.n++
		w.maxLag = max(w.maxLag, e.peakLag)
		w.meanIv += e.interval
		w.minIv, w.maxIv = min(w.minIv, e.interval), max(w.maxIv, e.interval)
		if e.dec.Breach {
			w.breaches++
		}
		w.levels[e.dec.Level]++
		w.lastLevel = e.dec.Level
	}
	if w.n > 0 {
		w.meanIv /= float64(w.n)
	}
	return w
}

func (w window) String() string {
	return fmt.Sprintf("%d epochs, interval %.1f..%.1fs (mean %.1fs), peak lag %.1fs, %d breach decisions, levels %v",
		w.n, w.minIv, w.maxIv, w.meanIv, w.maxLag, w.breaches, w.levels)
}

// predictionError checks that the predicted peak lag of each decision
// matches the lag the next epoch produced, within a factor, once settled.
func (r *simResult) predictionError(from, to float64) (worst float64) {
	for i := 1; i < len(r.epochs); i++ {
		prev, e := r.epochs[i-1], r.epochs[i]
		if prev.committed < from || e.committed >= to {
			continue
		}
		got, want := e.peakLag, seconds(prev.dec.PredictedLag)
		worst = max(worst, math.Abs(got-want)/want)
	}
	return worst
}

const (
	mB  = 1e6
	miB = 1 << 20
	giB = 1 << 30
)

func baseSetup(seed uint64, bw float64) simSetup {
	return simSetup{
		cfg: Config{
			RPOTarget:   60 * time.Second,
			MinInterval: 5 * time.Second,
			MaxInterval: 2 * time.Minute,
			StartLevel:  LevelFast,
		},
		guest:    newSimGuest(512*miB, 40*mB, 1*mB, seed),
		link:     simLink{segs: []simSegment{{0, bw}}, rtt: 0.02, jitter: 0.05},
		codec:    defaultCodec,
		full:     8 * giB,
		overhead: 0.1,
		duration: 2 * 3600,
		seed:     seed,
	}
}

func logf(t *testing.T, format string, args ...any) {
	t.Helper()
	if testing.Verbose() {
		t.Logf(format, args...)
	}
}

// settle is when start-up is over: the first full epoch of 8 GiB and
// the catch-up epoch after it.
const settle = 1800

// Scenario 1: plenty of bandwidth. Epochs stay at the minimum interval and
// the lag well under the target.
func TestSimPlentyOfBandwidth(t *testing.T) {
	r := runSim(t, baseSetup(1, 125*mB))
	w := r.window(settle, math.Inf(1))
	logf(t, "125 MB/s: %s; predictions within %.0f%%", w, 100*r.predictionError(settle, math.Inf(1)))
	if w.maxIv > 5.5 || w.maxLag > 10 || w.breaches > 0 || r.firstBreach(settle) >= 0 {
		t.Errorf("plenty of bandwidth: %s", w)
	}
	if w.lastLevel > LevelFast {
		t.Errorf("a fast link uses level %s", w.lastLevel)
	}
}

// Scenario 2: a slow link. Epochs lengthen and the compression gets
// stronger; the lag stays under the target.
func TestSimSlowLink(t *testing.T) {
	r := runSim(t, baseSetup(2, 10*mB))
	w := r.window(settle, math.Inf(1))
	logf(t, "10 MB/s: %s; predictions within %.0f%%", w, 100*r.predictionError(settle, math.Inf(1)))
	if w.minIv < 10 || w.maxLag > r.target || w.breaches > 0 {
		t.Errorf("slow link: %s", w)
	}
	if w.lastLevel < LevelDefault {
		t.Errorf("a slow link uses level %s", w.lastLevel)
	}
	if e := r.predictionError(settle, math.Inf(1)); e > 0.25 {
		t.Errorf("predicted lags off by up to %.0f%%", 100*e)
	}
	// Past the start-up (the full epoch), the lag never crossed the target.
	if at := r.crossAt(600); at >= 0 {
		t.Errorf("lag crossed the target at %.0fs", at)
	}
}

// Scenario 3a: the bandwidth drops to a quarter for half an hour, to a
// rate at which the target can still be met. Epochs lengthen, the lag
// stays within the target; when the bandwidth returns the epochs shorten
// again.
func TestSimBandwidthDropRecovers(t *testing.T) {
	s := baseSetup(3, 40*mB)
	s.duration = 3 * 3600
	s.link.segs = []simSegment{{0, 40 * mB}, {3600, 10 * mB}, {5400, 40 * mB}}
	r := runSim(t, s)
	before, during, after := r.window(settle, 3600), r.window(3600, 5400), r.window(5400+600, math.Inf(1))
	adapt := r.window(3600+300, 5400)
	logf(t, "40 MB/s: %s", before)
	logf(t, "10 MB/s: %s", during)
	logf(t, "10 MB/s after 5 min: %s", adapt)
	logf(t, "40 MB/s again: %s", after)
	if during.maxLag > r.target || r.crossAt(settle) >= 0 {
		t.Errorf("the lag crossed the target at %.0fs", r.crossAt(settle))
	}
	if adapt.minIv <= before.maxIv || adapt.lastLevel <= before.lastLevel {
		t.Errorf("epochs did not lengthen or compression did not strengthen: before %s; during %s", before, adapt)
	}
	if after.maxIv > before.maxIv*1.2 || after.lastLevel != before.lastLevel || after.breaches > 0 {
		t.Errorf("no return after the bandwidth came back: before %s; after %s", before, after)
	}
	checkSteady(t, r, 3600+600, 5400)
	checkSteady(t, r, 5400+600, math.Inf(1))
	checkAdaptedWithin(t, r, 3600, 4)
	checkAdaptedWithin(t, r, 5400, 4)
}

// Scenario 3b: the bandwidth drops to a quarter, to a rate at which the
// target cannot be met. The breach is predicted before the simulated lag
// crosses the target; when the bandwidth returns, the intervals shorten
// and the breach clears.
func TestSimBandwidthDropBreach(t *testing.T) {
	s := baseSetup(4, 16*mB)
	s.duration = 3 * 3600
	s.link.segs = []simSegment{{0, 16 * mB}, {3600, 4 * mB}, {5400, 16 * mB}}
	r := runSim(t, s)
	before, during, after := r.window(settle, 3600), r.window(3600, 5400), r.window(5400+900, math.Inf(1))
	logf(t, "16 MB/s: %s", before)
	logf(t, "4 MB/s: %s", during)
	logf(t, "16 MB/s again: %s", after)
	if before.breaches > 0 || before.maxLag > r.target {
		t.Fatalf("breach before the drop: %s", before)
	}
	predicted, crossed := r.firstBreach(3600), r.crossAt(3600)
	logf(t, "bandwidth drop at 3600s: breach predicted at %.0fs, lag crossed the target at %.0fs", predicted, crossed)
	if predicted < 0 || crossed >= 0 && predicted >= crossed {
		t.Errorf("breach predicted at %.0fs, lag crossed at %.0fs", predicted, crossed)
	}
	for _, e := range r.epochs {
		if e.committed >= predicted && e.committed < 5400 && !e.dec.Breach {
			t.Errorf("breach cleared at %.0fs while the bandwidth was low: %s", e.committed, e.dec.Reason)
			break
		}
	}
	if after.breaches > 0 || after.maxIv > before.maxIv*1.2 || after.maxLag > r.target {
		t.Errorf("no recovery: before %s; after %s", before, after)
	}
	cleared := -1.0
	for _, e := range r.epochs {
		if e.committed > 5400 && !e.dec.Breach {
			cleared = e.committed
			break
		}
	}
	logf(t, "bandwidth back at 5400s: breach cleared at %.0fs", cleared)
	if cleared < 0 || cleared > 5400+900 {
		t.Errorf("breach cleared at %.0fs", cleared)
	}
}

// Scenario 4: the guest dirties more than the link can carry at any
// interval. The breach is predicted at the first decision that has a dirty
// rate, with the rates in the reason, long before the lag crosses the
// target.
func TestSimDirtyAboveGoodput(t *testing.T) {
	s := baseSetup(5, 8*mB)
	s.full = 0
	s.guest = newSimGuest(512*miB, 40*mB, 20*mB, 5)
	s.codec.ratio = [NumLevels]float64{1.0, 0.80, 0.75, 0.70}
	s.duration = 3600
	r := runSim(t, s)
	predicted, crossed := r.firstBreach(0), r.crossAt(0)
	var first simEpoch
	for _, e := range r.epochs {
		if e.dec.Breach {
			first = e
			break
		}
	}
	logf(t, "dirty 60 MB/s, 8 MB/s link: breach predicted at %.0fs (%s), lag crossed the target at %.0fs", predicted, first.dec.Reason, crossed)
	if predicted < 0 || crossed >= 0 && predicted >= crossed {
		t.Fatalf("breach predicted at %.0fs, lag crossed at %.0fs", predicted, crossed)
	}
	if first.dec.Kind != PlanUnstable || !strings.Contains(first.dec.Reason, "exceeds goodput") ||
		!strings.Contains(first.dec.Reason, "s of sending per second") || !(first.dec.Estimates.LagGrowth > 0) {
		t.Errorf("reason: %s", first.dec.Reason)
	}
	last := r.epochs[len(r.epochs)-1].dec
	if !last.Breach || last.Interval != s.cfg.MaxInterval {
		t.Errorf("at the end: %s", last.Reason)
	}
}

// Scenario 5: a bandwidth cap below the link's rate. A sender that ignores
// the cap would measure the link; the controller still plans with the cap:
// never more than MaxBusy·cap on the wire per second of guest time, and
// the same epochs as on a link of the cap's rate.
func TestSimBandwidthCap(t *testing.T) {
	capped := baseSetup(6, 125*mB)
	capped.cfg.BandwidthCap = 10 * mB
	r := runSim(t, capped)
	w := r.window(settle, math.Inf(1))
	rs := runSim(t, baseSetup(6, 10*mB))
	slow := rs.window(settle, math.Inf(1))
	logf(t, "125 MB/s link capped at 10 MB/s: %s (10 MB/s link: %s)", w, slow)
	for _, e := range r.epochs[2:] {
		est := e.dec.Estimates
		if est.Goodput > capped.cfg.BandwidthCap || est.WireRate > DefaultMaxBusy*capped.cfg.BandwidthCap {
			t.Fatalf("plans %s per guest second at goodput %s: %s", fmtRate(est.WireRate), fmtRate(est.Goodput), e.dec.Reason)
		}
	}
	if w.minIv < 10 || math.Abs(w.meanIv-slow.meanIv) > 0.25*slow.meanIv {
		t.Errorf("capped: %s; a link of the cap's rate: %s", w, slow)
	}
	// The sender honours the cap itself: the same picture.
	capped.link.cap = capped.cfg.BandwidthCap
	r2 := runSim(t, capped)
	w2 := r2.window(settle, math.Inf(1))
	if w2.minIv < 10 || w2.maxLag > 60 {
		t.Errorf("capped by the sender: %s", w2)
	}
}

// Scenario 6: the compression level follows the link: the cheapest level
// on a fast link, a stronger one on a slow link, back on a fast one.
func TestSimLevelFollowsLink(t *testing.T) {
	s := baseSetup(7, 125*mB)
	s.duration = 3 * 3600
	s.link.segs = []simSegment{{0, 125 * mB}, {3600, 8 * mB}, {7200, 125 * mB}}
	r := runSim(t, s)
	fast1, slow, fast2 := r.window(settle, 3600), r.window(3600+600, 7200), r.window(7200+600, math.Inf(1))
	logf(t, "125 MB/s: %s", fast1)
	logf(t, "8 MB/s: %s", slow)
	logf(t, "125 MB/s: %s", fast2)
	if fast1.lastLevel > LevelFast || slow.lastLevel < LevelDefault || fast2.lastLevel > LevelFast {
		t.Errorf("levels %s, %s, %s", fast1.lastLevel, slow.lastLevel, fast2.lastLevel)
	}
	// Few switches: no flapping.
	switches := 0
	for i := 1; i < len(r.epochs); i++ {
		if r.epochs[i].dec.Level != r.epochs[i-1].dec.Level {
			switches++
		}
	}
	if switches > 8 {
		t.Errorf("%d level switches in 3 hours", switches)
	}
	// Without CPU measurements the rule works on ratios alone. (The sender
	// must then not be CPU-bound: here it compresses on many cores. A
	// CPU-bound sender that does not report CPU time looks like a slow link.)
	s = baseSetup(7, 125*mB)
	s.duration = 3 * 3600
	s.link.segs = []simSegment{{0, 125 * mB}, {3600, 8 * mB}, {7200, 125 * mB}}
	s.noCPU = true
	for l := range s.codec.speed {
		s.codec.speed[l] *= 16
	}
	r = runSim(t, s)
	fast1, slow, fast2 = r.window(settle, 3600), r.window(3600+600, 7200), r.window(7200+600, math.Inf(1))
	logf(t, "no CPU times: %s / %s / %s", fast1.lastLevel, slow.lastLevel, fast2.lastLevel)
	if fast1.lastLevel > LevelFast || slow.lastLevel < LevelDefault || fast2.lastLevel > LevelFast {
		t.Errorf("levels without CPU times %s, %s, %s", fast1.lastLevel, slow.lastLevel, fast2.lastLevel)
	}
}

// An outage: the link carries nothing for ten minutes. The one epoch that
// spans it is an outlier; a few epochs later the plan is as before.
func TestSimOutage(t *testing.T) {
	s := baseSetup(8, 40*mB)
	s.link.segs = []simSegment{{0, 40 * mB}, {3600, 1e3}, {4200, 40 * mB}}
	r := runSim(t, s)
	before, after := r.window(settle, 3600), r.window(4200+300, math.Inf(1))
	logf(t, "before the outage: %s", before)
	logf(t, "5 min after it: %s", after)
	if after.maxIv > before.maxIv*1.2 || after.maxLag > r.target || after.breaches > 0 || after.lastLevel != before.lastLevel {
		t.Errorf("before %s; after %s", before, after)
	}
	checkAdaptedWithin(t, r, 4200, 4)
}

// A workload change: the guest's hot set quadruples for an hour.
func TestSimWorkloadChange(t *testing.T) {
	s := baseSetup(9, 20*mB)
	s.duration = 3 * 3600
	s.workload = func(t float64, g *simGuest) {
		switch {
		case t >= 3600 && t < 7200:
			g.hotRate = 160 * mB / g.chunk
		default:
			g.hotRate = 40 * mB / g.chunk
		}
	}
	r := runSim(t, s)
	before, busy, after := r.window(settle, 3600), r.window(3600+600, 7200), r.window(7200+600, math.Inf(1))
	logf(t, "40 MB/s of writes: %s", before)
	logf(t, "160 MB/s of writes: %s", busy)
	logf(t, "40 MB/s again: %s", after)
	if busy.maxLag > r.target || after.maxLag > r.target || after.breaches > 0 {
		t.Errorf("busy %s; after %s", busy, after)
	}
	checkSteady(t, r, 7200+600, math.Inf(1))
}

// checkSteady fails if the decisions in [from, to) swing: an interval more
// than 25% away from the previous one, or more than a few changes of
// direction.
func checkSteady(t *testing.T, r simResult, from, to float64) {
	t.Helper()
	turns, dir := 0, 0
	var prev time.Duration
	for _, e := range r.epochs {
		if e.committed < from || e.committed >= to {
			continue
		}
		iv := e.dec.Interval
		if prev != 0 {
			ratio := float64(iv) / float64(prev)
			if ratio > 1.25 || ratio < 0.8 {
				t.Errorf("at %.0fs the interval swings from %s to %s: %s", e.committed, prev, iv, e.dec.Reason)
			}
			d := 0
			if iv > prev {
				d = 1
			} else if iv < prev {
				d = -1
			}
			if d != 0 && dir != 0 && d != dir {
				turns++
			}
			if d != 0 {
				dir = d
			}
		}
		prev = iv
	}
	if turns > 6 {
		t.Errorf("the interval changed direction %d times in [%.0f, %.0f)", turns, from, to)
	}
}

// checkAdaptedWithin fails unless, within n epochs after at, the decisions
// have settled: the interval stays within 20% of its final value there.
func checkAdaptedWithin(t *testing.T, r simResult, at float64, n int) {
	t.Helper()
	var after []simEpoch
	for _, e := range r.epochs {
		if e.committed >= at {
			after = append(after, e)
		}
	}
	if len(after) < n+10 {
		t.Fatalf("only %d epochs after %.0fs", len(after), at)
	}
	settled := seconds(after[n+9].dec.Interval)
	for _, e := range after[n : n+10] {
		if iv := seconds(e.dec.Interval); math.Abs(iv-settled) > 0.2*settled {
			t.Errorf("%d epochs after %.0fs the interval is %.1fs, later %.1fs", n, at, iv, settled)
			return
		}
	}
}
