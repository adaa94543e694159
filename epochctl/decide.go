package epochctl

import (
	"fmt"
	"math"
	"time"
)

// PlanKind says how a plan stands against the target.
type PlanKind uint8

const (
	// PlanStart: nothing is known yet; the shortest interval.
	PlanStart PlanKind = iota
	// PlanHeadroom: the shortest interval keeps the sender within TargetBusy.
	PlanHeadroom
	// PlanLinkBound: a longer interval is needed to keep the sender within
	// TargetBusy (the link, or the fixed overhead per epoch, sets the pace).
	PlanLinkBound
	// PlanCPUBound: a longer interval is needed to keep compression within
	// MaxCPUShare.
	PlanCPUBound
	// PlanTight: the target is met only with the sender busier than
	// TargetBusy (at most MaxBusy).
	PlanTight
	// PlanLagBreach: the sender keeps up, but the shortest workable interval
	// predicts a lag above the target less the margin.
	PlanLagBreach
	// PlanOverloaded: no interval in range keeps the sender within MaxBusy,
	// though it still (barely) keeps up.
	PlanOverloaded
	// PlanUnstable: at every interval in range, an epoch takes longer to send
	// than the guest time it covers: the lag grows without bound.
	PlanUnstable
	// PlanCPUOverload: the level needs more than MaxCPUShare at every
	// interval in range.
	PlanCPUOverload
)

var planKindNames = [...]string{"start", "headroom", "link-bound", "cpu-bound", "tight", "lag-breach", "overloaded", "unstable", "cpu-overload"}

func (k PlanKind) String() string {
	if int(k) < len(planKindNames) {
		return planKindNames[k]
	}
	return fmt.Sprintf("PlanKind(%d)", uint8(k))
}

// Breach reports whether plans of this kind miss the target.
func (k PlanKind) Breach() bool { return k >= PlanLagBreach }

// rank orders kinds for the choice between levels: meeting the target
// with the sender within TargetBusy first, then meeting it busier, then a
// finite lag, then growth, then unusable.
func (k PlanKind) rank() int {
	switch k {
	case PlanTight:
		return 1
	case PlanLagBreach, PlanOverloaded:
		return 2
	case PlanUnstable:
		return 3
	case PlanCPUOverload:
		return 4
	}
	return 0
}

// LevelPlan is the best plan at one compression level.
type LevelPlan struct {
	Level        Level
	Kind         PlanKind
	Interval     time.Duration
	PredictedLag time.Duration // T + E(T)
	Busy         float64       // E(T)/T
	CPUShare     float64       // P(T)/T
	LagGrowth    float64       // PlanUnstable only: E(T)/T − 1, the seconds of sending the backlog gains per second
}

// Estimates are the measured rates and the model at the chosen plan.
type Estimates struct {
	Observations int

	Goodput         float64 // bytes/s planned with: measured, capped at BandwidthCap (0: unknown)
	LiveGoodput     float64 // bytes/s of the epoch in flight over its latest seconds (0: none, or too little sent to tell)
	MeasuredGoodput float64 // bytes/s measured on the wire before the cap (0: unknown)
	Overhead        time.Duration

	// The changed-bytes curve around the chosen interval T: the local fit
	// C(T) = DirtyA·(T/1s)^DirtyB (see the package documentation), valid
	// within DirtyRange, the span of intervals observed, and continued
	// linearly beyond it. DirtyRate is C(T)/T, bytes changed per second of
	// guest time at the chosen interval.
	DirtyA, DirtyB float64
	DirtyRange     [2]time.Duration
	DirtyRate      float64

	DedupRatio       float64
	CompressionRatio [NumLevels]float64 // wire/raw bytes, measured or derived
	CompressSpeed    [NumLevels]float64 // raw bytes per CPU second; 0: not modelled
	Measured         [NumLevels]bool    // the level's ratio comes from its own epochs

	// The chosen plan: bytes per epoch, wire bytes per second of guest
	// time, and times.
	Changed, Wire float64
	WireRate      float64
	SendTime      time.Duration // S(T)
	CPUTime       time.Duration // P(T)
	Busy          float64       // E(T)/T
	LagGrowth     float64       // unstable plans: E(T)/T − 1, the seconds of sending the backlog gains per second
}

// Decision is what the controller plans for the next epoch.
type Decision struct {
	NextCut      time.Time     // when to cut the next epoch: not before now, after the last cut
	Interval     time.Duration // the epoch length chosen, in [MinInterval, MaxInterval]
	Level        Level         // compression for the next epoch
	PredictedLag time.Duration // predicted lag just before the next epoch commits: its peak (in flight: the greater of that epoch's and the next one's)
	Breach       bool          // the target (less the margin) cannot be met at the measured rates
	Kind         PlanKind
	Reason       string // one line for logs and status
	Estimates    Estimates
	Plans        []LevelPlan // the best plan at each allowed level, cheapest first
}

// plan is a LevelPlan with its prediction, in seconds.
type plan struct {
	level Level
	kind  PlanKind
	p     prediction
	grow  float64
}

func (p *plan) score() float64 {
	switch p.kind {
	case PlanUnstable:
		return p.grow
	case PlanCPUOverload:
		return p.p.CPU / p.p.T
	}
	return p.p.Lag
}

// grid rounds an interval in seconds to two significant digits (5.3 s,
// 18 s, 240 s), up or down, so that plans read well and the sender's
// timing jitter does not creep into the hysteresis.
func grid(T float64, up bool) float64 {
	if !(T > 0) || math.IsInf(T, 0) {
		return T
	}
	unit := math.Pow(10, math.Floor(math.Log10(T))-1)
	q := T / unit
	// The slack absorbs rounding errors: 5.0000001 is 5.
	if up {
		q = math.Ceil(q - 1e-3)
	} else {
		q = math.Floor(q + 1e-3)
	}
	return q * unit
}

func nearestGrid(T float64) float64 {
	lo, hi := grid(T, false), grid(T, true)
	if T-lo <= hi-T {
		return lo
	}
	return hi
}

// candidates are the intervals a plan may choose: the grid values within
// [lo, hi], and lo and hi themselves.
func candidates(lo, hi float64) []float64 {
	out := []float64{lo}
	for e := math.Floor(math.Log10(lo)); ; e++ {
		unit := math.Pow(10, e-1)
		for q := 10.0; q < 100; q++ {
			v := q * unit
			if v >= hi {
				return append(out, hi)
			}
			if v > lo {
				out = append(out, v)
			}
		}
	}
}

// planLevel finds the best interval at level l among the candidates. The
// objective: the smallest peak lag T + E(T) subject to E(T) ≤ TargetBusy·T
// and P(T) ≤ MaxCPUShare·T; if that lag is above the goal, the sender may
// be busier, up to MaxBusy, and the plan is the longest interval that still
// meets the goal (the most headroom that does); if even that fails, the
// kinds of breach. The candidates are scanned rather than bisected, so that
// a curve that is not monotone (workloads change) cannot mislead the search.
func (c *Controller) planLevel(m *model, l Level, cands, changed []float64) plan {
	cfg := &c.cfg
	goal := (1 - cfg.Margin) * seconds(cfg.RPOTarget)
	preds := make([]prediction, len(cands))
	cpuOK := make([]bool, len(cands))
	first := func(limit float64) int {
		for i, p := range preds {
			if cpuOK[i] && p.Elapsed <= limit*p.T {
				return i
			}
		}
		return -1
	}
	anyCPU := false
	for i, T := range cands {
		preds[i] = m.predictChanged(T, changed[i], l)
		cpuOK[i] = preds[i].CPU <= cfg.MaxCPUShare*T
		anyCPU = anyCPU || cpuOK[i]
	}
	i1 := first(cfg.TargetBusy)
	if i1 >= 0 && preds[i1].Lag <= goal {
		kind := PlanHeadroom
		switch {
		case i1 > 0 && !cpuOK[i1-1]:
			kind = PlanCPUBound
		case i1 > 0:
			kind = PlanLinkBound
		}
		return plan{level: l, kind: kind, p: preds[i1]}
	}
	if i2 := first(cfg.MaxBusy); i2 >= 0 {
		if preds[i2].Lag > goal {
			return plan{level: l, kind: PlanLagBreach, p: preds[i2]}
		}
		// The longest interval still meeting the goal, up to the one that
		// would keep the sender within TargetBusy.
		best, top := i2, len(cands)-1
		if i1 >= 0 {
			top = i1
		}
		for i := i2; i <= top; i++ {
			if p := preds[i]; cpuOK[i] && p.Elapsed <= cfg.MaxBusy*p.T && p.Lag <= goal {
				best = i
			}
		}
		return plan{level: l, kind: PlanTight, p: preds[best]}
	}
	if !anyCPU {
		return plan{level: l, kind: PlanCPUOverload, p: preds[len(preds)-1]}
	}
	// No interval keeps the sender within MaxBusy: the one with the least
	// busy fraction (normally the longest, which coalesces the most) slows
	// the growth most.
	low := -1
	for i := len(preds) - 1; i >= 0; i-- { // the longest unless a shorter one is 1% less busy
		if cpuOK[i] && (low < 0 || preds[i].Busy < 0.99*preds[low].Busy) {
			low = i
		}
	}
	p := preds[low]
	if p.Elapsed >= p.T {
		return plan{level: l, kind: PlanUnstable, p: p, grow: p.Busy - 1}
	}
	return plan{level: l, kind: PlanOverloaded, p: p}
}

// severity orders kinds by how far they fall short: the kinds within
// TargetBusy, then tight, then the kinds of breach in their order.
func (k PlanKind) severity() int {
	if k < PlanTight {
		return 0
	}
	return int(k - PlanTight + 1)
}

// kindAt classifies one interval at its level (p) by the rules planLevel
// applies to the intervals it scans. like is the kind of the plan the scan
// chose, whose flavour (headroom, link- or cpu-bound) an interval within
// TargetBusy and the target keeps. It returns the kind and, for an
// unstable interval, the backlog growth E(T)/T − 1.
func (c *Controller) kindAt(p prediction, like PlanKind) (PlanKind, float64) {
	cfg := &c.cfg
	goal := (1 - cfg.Margin) * seconds(cfg.RPOTarget)
	// The comparisons are the scan's, term for term, so that an interval
	// the scan saw gets the kind it gave it. An interval that takes exactly
	// its own length to send keeps up, barely (the scan never ends on one).
	switch {
	case p.CPU > cfg.MaxCPUShare*p.T:
		return PlanCPUOverload, 0
	case p.Elapsed > p.T*(1+1e-9):
		return PlanUnstable, p.Busy - 1
	case p.Elapsed > cfg.MaxBusy*p.T:
		return PlanOverloaded, 0
	case p.Lag > goal:
		return PlanLagBreach, 0
	case p.Elapsed > cfg.TargetBusy*p.T:
		return PlanTight, 0
	case like.severity() == 0 && like != PlanStart:
		return like, 0
	}
	return PlanLinkBound, 0
}

// currentLevel is the level the sender last used, or StartLevel if none
// or one not allowed.
func (c *Controller) currentLevel() Level {
	if c.last != nil && c.cfg.allowed(c.last.level) {
		return c.last.level
	}
	return c.cfg.StartLevel
}

// chooseLevel picks among plans (cheapest level first) with hysteresis:
// the current level stays while its score is within 2·LevelGain of the
// best; a cheaper level replaces it when within LevelGain of the best;
// otherwise the cheapest level within LevelGain of the best is taken.
// Scores of different ranks never compare: meeting the target within
// TargetBusy beats meeting it busier, which beats a lag breach, which
// beats growth.
func (c *Controller) chooseLevel(plans []plan, cur Level) int {
	best := 0
	for i := range plans {
		a, b := &plans[i], &plans[best]
		if a.kind.rank() < b.kind.rank() || a.kind.rank() == b.kind.rank() && a.score() < b.score() {
			best = i
		}
	}
	within := func(i int, tol float64) bool {
		a, b := &plans[i], &plans[best]
		return a.kind.rank() == b.kind.rank() && a.score() <= b.score()*(1+tol)+1e-9
	}
	gain := c.cfg.LevelGain
	for i := range plans {
		if plans[i].level == cur && within(i, 2*gain) {
			for j := 0; j < i; j++ {
				if within(j, gain) {
					return j
				}
			}
			return i
		}
	}
	for i := range plans {
		if within(i, gain) {
			return i
		}
	}
	return best
}

// Decide plans the next epoch at time now (normally when the last epoch's
// commit was acknowledged). It does not change the controller.
//
// While an epoch is in flight (ObserveProgress reported it and Observe has
// not yet), the decision is the plan for the epoch after it: the live
// goodput enters the estimate as a sample would, the hysteresis starts
// from the epoch in flight, the next cut comes no earlier than its
// predicted commit, and the predicted lag is the greater of its peak and
// the next epoch's.
func (c *Controller) Decide(now time.Time) Decision {
	m := c.model()
	if c.flight == nil {
		return c.decide(m, now, now, nil)
	}
	if g, ok := c.flight.liveGoodput(now); ok {
		link := c.link
		link.add(g, false, &c.cfg)
		m.setGoodput(link.value(), c.cfg.BandwidthCap)
	}
	in := c.inFlight(m, now)
	// The plan is made as if the epoch in flight were the last observed:
	// a shallow copy, which decide does not change.
	v := *c
	v.lastCut = in.cut
	v.last = &lastEpoch{interval: in.interval, level: in.level}
	earliest := now
	if in.commit < seconds(longestInterval) {
		earliest = now.Add(toLag(in.commit))
	}
	return v.decide(m, now, earliest, in)
}

// decide plans the next cut, not before earliest, at now; in is the epoch
// in flight, if any.
func (c *Controller) decide(m *model, now, earliest time.Time, in *inFlight) Decision {
	cfg := &c.cfg
	lo, hi := seconds(cfg.MinInterval), seconds(cfg.MaxInterval)
	goal := (1 - cfg.Margin) * seconds(cfg.RPOTarget)
	cur := c.currentLevel()

	var chosen plan
	var plans []plan
	if m.fit.n == 0 {
		chosen = plan{level: cur, kind: PlanStart, p: m.predict(lo, cur)}
	} else {
		cands := candidates(lo, hi)
		changed := make([]float64, len(cands))
		for i, T := range cands {
			changed[i] = m.fit.changed(T)
		}
		for _, l := range AllLevels() {
			if cfg.allowed(l) {
				plans = append(plans, c.planLevel(m, l, cands, changed))
			}
		}
		chosen = plans[c.chooseLevel(plans, cur)]
	}
	T := chosen.p.T
	l := chosen.level

	// Bounded steps and a deadband around the interval the sender ran
	// last, unless only a bigger step meets the target.
	step := ""
	if c.last != nil && c.last.interval > 0 && chosen.kind != PlanStart {
		base := min(max(nearestGrid(c.last.interval), lo), hi)
		Tl := min(max(T, base/cfg.StepFactor), base*cfg.StepFactor)
		Tl = min(max(grid(Tl, Tl > T), lo), hi)
		// The interval held must be no worse a plan than the one chosen:
		// within the target and MaxBusy when the chosen plan meets the
		// target, of no graver kind of breach when it does not.
		baseKind, _ := c.kindAt(m.predict(base, l), chosen.kind)
		baseOK := baseKind.severity() <= max(chosen.kind.severity(), PlanTight.severity())
		held := false
		if math.Abs(Tl-base) <= cfg.Deadband*base && baseOK {
			Tl, held = base, Tl != base
		}
		if !chosen.kind.Breach() && m.predict(Tl, l).Lag > goal {
			Tl = T
		}
		switch {
		case Tl == T:
		case held:
			step = fmt.Sprintf(" (holding %s: %s is within the deadband)", fmtSec(base), fmtSec(T))
		default:
			step = fmt.Sprintf(" (stepping from %s towards %s)", fmtSec(base), fmtSec(T))
		}
		T = Tl
	}
	// The decision describes the interval planned: when the hysteresis moved
	// it off the chosen plan, its kind (and so the breach) is that of the
	// interval held or stepped to, not of the one the scan found.
	p := m.predict(T, l)
	final := chosen
	if T != chosen.p.T {
		final.kind, final.grow = c.kindAt(p, chosen.kind)
		final.p = p
	}

	d := Decision{Level: l, Kind: final.kind, Interval: toDuration(T, cfg)}
	d.NextCut = earliest
	gap := seconds(d.Interval)
	if !c.lastCut.IsZero() {
		if next := c.lastCut.Add(d.Interval); next.After(earliest) {
			d.NextCut = next
		}
		gap = seconds(d.NextCut.Sub(c.lastCut))
	}
	lag := gap + m.predict(max(gap, T), l).Elapsed
	// The epoch in flight peaks at its commit, with the replica still at
	// the cut before it.
	peak := 0.0
	if in != nil && in.interval > 0 {
		peak = in.lag + in.commit
	}
	d.PredictedLag = toLag(max(lag, peak))
	d.Breach = final.kind.Breach() || lag > goal || peak > goal

	for _, q := range plans {
		lp := LevelPlan{Level: q.level, Kind: q.kind, Interval: toDuration(q.p.T, cfg), PredictedLag: toLag(q.p.Lag),
			Busy: q.p.Busy, LagGrowth: q.grow}
		if q.p.T > 0 {
			lp.CPUShare = q.p.CPU / q.p.T
		}
		d.Plans = append(d.Plans, lp)
	}
	d.Estimates = c.estimates(m, p, final.grow)
	d.Reason = c.reason(m, final, chosen, lag, gap, goal, plans) + step
	if in != nil {
		d.Estimates.LiveGoodput = in.live
		if peak > goal {
			d.Reason = in.reason(peak, goal) + "; then " + d.Reason
		} else {
			d.Reason += "; " + in.reason(peak, goal)
		}
	}
	return d
}

// toDuration converts a planned interval to a Duration within the bounds.
func toDuration(T float64, cfg *Config) time.Duration {
	d := time.Duration(math.Round(T * 1e9))
	return min(max(d, cfg.MinInterval), cfg.MaxInterval)
}

// toLag converts a predicted lag in seconds, saturating.
func toLag(s float64) time.Duration {
	if !(s < float64(math.MaxInt64)/1e9) {
		return math.MaxInt64
	}
	return time.Duration(math.Round(max(s, 0) * 1e9))
}

func (c *Controller) estimates(m *model, p prediction, grow float64) Estimates {
	e := Estimates{
		Observations:     c.observed,
		Goodput:          m.goodput,
		MeasuredGoodput:  m.rawGood,
		Overhead:         toLag(m.overhead),
		DedupRatio:       m.dedup,
		CompressionRatio: m.ratio,
		CompressSpeed:    m.speed,
		Measured:         m.measured,
		Changed:          p.Changed,
		Wire:             p.Wire,
		SendTime:         toLag(p.Send),
		CPUTime:          toLag(p.CPU),
		Busy:             p.Busy,
		LagGrowth:        grow,
	}
	if m.fit.n > 0 {
		e.DirtyRange = [2]time.Duration{toLag(m.fit.lo), toLag(m.fit.hi)}
		x := math.Log(min(max(p.T, m.fit.lo), m.fit.hi))
		lna, b := m.fit.local(x)
		e.DirtyA, e.DirtyB = math.Exp(lna), b
	}
	if p.T > 0 {
		e.DirtyRate = p.Changed / p.T
		e.WireRate = p.Wire / p.T
	}
	return e
}
