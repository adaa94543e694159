package epochctl

import (
	"time"
)

// Observation is what one committed epoch taught. Fields the caller does not
// know are left zero; the controller uses what is there.
type Observation struct {
	Cut       time.Time     // the epoch's cut instant
	Committed time.Time     // when its commit was acknowledged
	Interval  time.Duration // guest time the epoch covers: this cut − previous cut (0: derive from Cut, or unknown)

	ChangedBytes int64         // bytes that differed from the replica, before dedup and compression
	DedupedBytes int64         // of those, bytes sent as references instead of data
	WireBytes    int64         // bytes that went on the wire
	SendTime     time.Duration // time spent sending
	CPUTime      time.Duration // sender CPU spent compressing (0: not measured)
	Level        Level         // compression level the epoch used
}

// Controller plans epochs from what committed epochs showed. It is not safe
// for concurrent use. Decide does not change it: the same observations and
// the same now give the same decision.
type Controller struct {
	cfg Config

	observed int        // observations taken
	lastCut  time.Time  // latest cut observed
	last     *lastEpoch // the most recent observation, for hysteresis
	dirty    dirtyCurve
	dedup    ewma
	levels   [NumLevels]levelStats
	cpuSeen  bool // some epoch reported CPU time
	link     goodput
	overhead []float64 // seconds, newest last
	flight   *flight   // the epoch in flight, from its progress; nil between epochs
}

// lastEpoch is what hysteresis compares against: the interval and level the
// sender actually ran last.
type lastEpoch struct {
	interval float64 // seconds, 0 if unknown
	level    Level
}

// New returns a Controller for c, after filling its defaults.
func New(c Config) (*Controller, error) {
	c.Levels = append([]Level(nil), c.Levels...)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &Controller{cfg: c}, nil
}

// SetConfig changes the configuration from the next decision on, keeping
// what the observations so far taught (rates, curves, levels measured).
func (c *Controller) SetConfig(cfg Config) error {
	cfg.Levels = append([]Level(nil), cfg.Levels...)
	if err := cfg.Validate(); err != nil {
		return err
	}
	c.cfg = cfg
	return nil
}

// Config returns the configuration with its defaults filled in.
func (c *Controller) Config() Config {
	cfg := c.cfg
	cfg.Levels = append([]Level(nil), cfg.Levels...)
	return cfg
}

func seconds(d time.Duration) float64 { return d.Seconds() }

// Observe records a committed epoch. It accepts anything: values that cannot
// be right (negative sizes, a commit before its cut) are left out of the
// estimates they would spoil.
func (c *Controller) Observe(o Observation) {
	c.observed++
	cfg := &c.cfg

	interval := seconds(o.Interval)
	if o.Interval <= 0 && !c.lastCut.IsZero() && !o.Cut.IsZero() && o.Cut.After(c.lastCut) {
		interval = seconds(o.Cut.Sub(c.lastCut))
	}
	if !(interval > 0) || interval > maxSaneInterval*3600 {
		interval = 0
	}
	if !o.Cut.IsZero() && (c.lastCut.IsZero() || o.Cut.After(c.lastCut)) {
		c.lastCut = o.Cut
	}
	// The epoch in flight has committed (or a later one has): its progress
	// no longer says anything.
	if c.flight != nil && !c.flight.cut.After(c.lastCut) {
		c.flight = nil
	}
	level := o.Level
	if !level.Valid() { // not a level: assume the one in use did not change
		level = c.currentLevel()
	}
	c.last = &lastEpoch{interval: interval, level: level}

	changed := max(o.ChangedBytes, 0)
	deduped := min(max(o.DedupedBytes, 0), changed)
	raw := float64(changed - deduped)
	wire := float64(max(o.WireBytes, 0))
	send := max(seconds(o.SendTime), 0)
	cpu := max(seconds(o.CPUTime), 0)
	elapsed := 0.0
	if !o.Cut.IsZero() && !o.Committed.IsZero() && !o.Committed.Before(o.Cut) {
		elapsed = seconds(o.Committed.Sub(o.Cut))
	}

	// The changed-bytes curve. Once it has something to say, a sample is
	// clipped to ×/÷ outlierFactor of what it predicts, and one beyond the
	// longest interval seen to the linear growth from there: an epoch
	// longer than any before changing more than proportionally more is a
	// resync or a burst, not coalescing.
	if interval > 0 {
		C := max(float64(changed), dirtyFloor)
		if c.dirty.samples >= 4 {
			f := c.dirty.fit(c.halfLife())
			if p := f.changed(interval); p > 0 {
				top := p * outlierFactor
				if interval > f.hi {
					top = p
				}
				C = min(max(C, p/outlierFactor), top)
			}
		}
		c.dirty.add(interval, C, cfg.Smoothing)
	}

	if changed >= minRatioBytes {
		c.dedup.add(float64(deduped)/float64(changed), cfg.Smoothing)
	}
	if raw >= minRatioBytes && wire > 0 {
		c.levels[level].ratio.add(min(max(wire/raw, 0.01), 2), cfg.Smoothing)
	}
	if raw >= minRatioBytes && cpu > 0 && level != LevelNone {
		c.levels[level].speed.add(raw/cpu, cfg.Smoothing)
		c.cpuSeen = true
	}

	// Goodput: the send time if given, else the whole cut-to-commit time
	// less the overhead known so far (which makes the sample low, so it
	// errs on the safe side).
	sendFor := send
	if sendFor == 0 && elapsed > 0 {
		sendFor = max(elapsed-c.overheadEstimate(), elapsed/2)
	}
	if wire > 0 && sendFor > 0 {
		sample := wire / sendFor
		lowerBound := wire < minGoodBytes || sendFor < minGoodSend || (cpu > 0 && cpu >= cpuBoundShare*sendFor)
		c.link.add(sample, lowerBound, cfg)
	}

	// Fixed overhead: what the cut-to-commit time spent beyond sending.
	if elapsed > 0 && send > 0 && elapsed >= send {
		c.overhead = append(c.overhead, elapsed-send)
		if len(c.overhead) > overheadSamples {
			c.overhead = c.overhead[1:]
		}
	}
}

func (c *Controller) overheadEstimate() float64 { return median(c.overhead) }

func (c *Controller) halfLife() float64 { return seconds(c.cfg.CurveHalfLife) }

// model is a snapshot of the estimates, in seconds and bytes.
type model struct {
	fit      dirtyFit
	dedup    float64
	ratio    [NumLevels]float64
	speed    [NumLevels]float64 // raw bytes per CPU second; 0 = no CPU cost modelled
	measured [NumLevels]bool
	goodput  float64 // planning goodput (capped); 0 = unknown
	rawGood  float64 // measured goodput before the cap; 0 = unknown
	capped   bool    // the cap is below the measured goodput (or nothing was measured)
	overhead float64
}

func (c *Controller) model() *model {
	m := &model{
		fit:      c.dirty.fit(c.halfLife()),
		overhead: c.overheadEstimate(),
		rawGood:  c.link.value(),
	}
	if c.dedup.known {
		m.dedup = min(max(c.dedup.v, 0), 0.99)
	}
	m.setGoodput(m.rawGood, c.cfg.BandwidthCap)
	for l := range Level(NumLevels) {
		m.measured[l] = c.levels[l].ratio.known
	}
	ratioKnown := func(l Level) bool { return c.levels[l].ratio.known }
	speedKnown := func(l Level) bool { return c.levels[l].speed.known }
	m.ratio[LevelNone] = 1
	if ratioKnown(LevelNone) {
		m.ratio[LevelNone] = c.levels[LevelNone].ratio.v
	}
	for l := LevelFast; l < NumLevels; l++ {
		switch n := nearestMeasured(l, ratioKnown); {
		case ratioKnown(l):
			m.ratio[l] = c.levels[l].ratio.v
		case n >= 0:
			m.ratio[l] = c.levels[n].ratio.v * priorRatio[l] / priorRatio[n]
		default:
			m.ratio[l] = priorRatio[l]
		}
		if !c.cpuSeen {
			continue // the caller does not measure CPU: none is modelled
		}
		switch n := nearestMeasured(l, speedKnown); {
		case speedKnown(l):
			m.speed[l] = c.levels[l].speed.value()
		case n >= 0:
			m.speed[l] = c.levels[n].speed.value() * priorSpeed[l] / priorSpeed[n]
		default:
			m.speed[l] = priorSpeed[l]
		}
	}
	return m
}

// setGoodput sets the measured goodput g and the planning goodput, g
// capped at cp (0: no cap).
func (m *model) setGoodput(g, cp float64) {
	m.rawGood, m.goodput, m.capped = g, g, false
	if cp > 0 && (m.goodput == 0 || cp < m.goodput) {
		m.goodput, m.capped = cp, true
	}
}

// prediction is the model evaluated at one interval and level; times in
// seconds, sizes in bytes.
type prediction struct {
	T       float64 // interval
	Changed float64 // C(T)
	Raw     float64 // R(T) = (1−d)·C(T)
	Wire    float64 // W(T) = r·R(T)
	CPU     float64 // P(T) = R(T)/k
	Send    float64 // S(T) = max(W/g, P)
	Elapsed float64 // E(T) = F + S(T), cut to commit
	Lag     float64 // T + E(T), the peak lag
	Busy    float64 // E(T)/T
}

func (m *model) predict(T float64, l Level) prediction {
	return m.predictChanged(T, m.fit.changed(T), l)
}

// predictChanged is predict with C(T) already known.
func (m *model) predictChanged(T, changed float64, l Level) prediction {
	p := prediction{T: T, Changed: changed}
	p.Raw = (1 - m.dedup) * p.Changed
	p.Wire = m.ratio[l] * p.Raw
	if m.speed[l] > 0 {
		p.CPU = p.Raw / m.speed[l]
	}
	p.Send = p.CPU
	if m.goodput > 0 {
		p.Send = max(p.Wire/m.goodput, p.CPU)
	}
	p.Elapsed = m.overhead + p.Send
	p.Lag = T + p.Elapsed
	p.Busy = p.Elapsed / T
	return p
}

// Prediction is the model evaluated at one interval and level: what an
// epoch of that length would change, put on the wire and cost.
type Prediction struct {
	Interval           time.Duration
	Changed, Raw, Wire float64       // bytes: C(T), R(T) after dedup, W(T) after compression
	CPUTime            time.Duration // P(T), compression CPU
	SendTime           time.Duration // S(T) = max(W/g, P)
	Elapsed            time.Duration // E(T) = F + S(T), cut to commit
	PeakLag            time.Duration // T + E(T)
	Busy               float64       // E(T)/T
}

// Predict evaluates the model for an epoch of the given length at level l,
// whatever the bounds of the configuration: for status pages and what-if
// questions. With nothing observed, every size is 0.
func (c *Controller) Predict(interval time.Duration, l Level) Prediction {
	T := max(seconds(interval), 1e-9)
	if !l.Valid() {
		l = c.currentLevel()
	}
	p := c.model().predict(T, l)
	return Prediction{
		Interval: interval, Changed: p.Changed, Raw: p.Raw, Wire: p.Wire,
		CPUTime: toLag(p.CPU), SendTime: toLag(p.Send), Elapsed: toLag(p.Elapsed), PeakLag: toLag(p.Lag), Busy: p.Busy,
	}
}
