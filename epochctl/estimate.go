package epochctl

import (
	"math"
	"slices"
)

// Sample filters and bounds. They are properties of the measurements, not
// tuning knobs, so they are constants rather than Config fields.
const (
	dirtyFloor      = 4096      // bytes: an epoch counts as changing at least one page (keeps logs finite)
	minRatioBytes   = 64 << 10  // bytes: smaller epochs say nothing about dedup or compression
	minGoodBytes    = 1 << 20   // bytes: smaller transfers measure latency, not goodput
	minGoodSend     = 0.2       // seconds: likewise
	cpuBoundShare   = 0.9       // CPUTime ≥ this·SendTime: the compressor, not the link, set the pace
	outlierFactor   = 4.0       // a sample beyond ×/÷ this of the prediction is clipped to it
	goodputClip     = 8.0       // a goodput sample beyond ×/÷ this of the estimate is clipped to it
	ridge           = 0.03      // prior pulling the fitted exponent towards 1, in weights of a full bin times (ln T)²
	minExponent     = 0.25      // the fitted exponent b is kept in [minExponent, 1]
	overheadSamples = 9         // the fixed overhead is the median of this many recent epochs
	maxSaneInterval = 366 * 24. // hours: an observed interval beyond this is ignored
)

// Priors for levels never observed: the wire/raw ratio and the compressor
// speed in raw bytes per CPU second. Only their ratios between levels are
// used once any compressing level has been observed: an unobserved level is
// predicted from the nearest observed one, scaled by these.
var (
	priorRatio = [NumLevels]float64{1.0, 0.55, 0.48, 0.43}
	priorSpeed = [NumLevels]float64{0, 400e6, 120e6, 35e6}
)

// ewma is an exponentially weighted moving average that starts at its first
// sample.
type ewma struct {
	v     float64
	known bool
}

func (e *ewma) add(x, alpha float64) {
	if !e.known {
		e.v, e.known = x, true
		return
	}
	e.v += alpha * (x - e.v)
}

// logEWMA averages the logarithm of positive samples, so that a sample k
// times the estimate moves it as much as one k times below it.
type logEWMA struct{ ewma }

func (e *logEWMA) add(x, alpha float64) { e.ewma.add(math.Log(x), alpha) }
func (e *logEWMA) value() float64 {
	if !e.known {
		return 0
	}
	return math.Exp(e.v)
}

// goodput estimates the link's goodput in bytes/s. Samples taken when the
// link did not set the pace (a CPU-bound epoch, a transfer too small to
// leave the latency behind) are lower bounds: they may raise the estimate,
// never lower it.
type goodput struct{ logEWMA }

func (g *goodput) add(sample float64, lowerBound bool, cfg *Config) {
	if !(sample > 0) || math.IsInf(sample, 0) {
		return
	}
	if !g.known {
		g.logEWMA.add(sample, 1)
		return
	}
	cur := g.value()
	if lowerBound && sample <= cur {
		return
	}
	sample = min(max(sample, cur/goodputClip), cur*goodputClip)
	alpha := cfg.AlphaUp
	if sample < cur {
		alpha = cfg.AlphaDown
	}
	g.logEWMA.add(sample, alpha)
}

// The changed-bytes curve. Epochs are binned by interval (bins a factor
// binRatio wide); each bin keeps EWMAs of ln T and ln C, a sample count and
// the guest time it was last updated. C at an interval comes from a power
// law fitted locally around it (see doc.go).
const (
	binRatio      = 1.2
	maxBins       = 64
	kernelWidth   = math.Ln2 // the local fit weighs bins by exp(−((x−x0)/kernelWidth)²/2)
	fullBin       = 4        // samples after which a bin weighs fully
	staleWeight   = 0.05     // bins weighing less do not extend the observed range
	minKernelMass = 1e-9
	kernelCutoff  = 30 // bins further than √60 kernel widths are skipped
)

type dirtyBin struct {
	key  int
	x, y float64 // EWMAs of ln T (seconds) and ln C (bytes)
	n    int     // samples, up to fullBin
	seen float64 // guest clock at the last sample
}

// dirtyCurve remembers the changed bytes per epoch at the intervals seen.
type dirtyCurve struct {
	bins    []dirtyBin // sorted by key
	clock   float64    // guest time observed so far, seconds
	samples int
}

// add records an epoch of T seconds that changed C bytes (both > 0).
func (d *dirtyCurve) add(T, C, alpha float64) {
	d.clock += T
	d.samples++
	x, y := math.Log(T), math.Log(C)
	key := int(math.Round(x / math.Log(binRatio)))
	i, found := slices.BinarySearchFunc(d.bins, key, func(b dirtyBin, k int) int { return b.key - k })
	if !found {
		d.bins = slices.Insert(d.bins, i, dirtyBin{key: key, x: x, y: y})
	}
	b := &d.bins[i]
	if found {
		b.x += alpha * (x - b.x)
		b.y += alpha * (y - b.y)
	}
	b.n = min(b.n+1, fullBin)
	b.seen = d.clock
	if len(d.bins) > maxBins { // forget the stalest
		old := 0
		for j := range d.bins {
			if d.bins[j].seen < d.bins[old].seen {
				old = j
			}
		}
		d.bins = slices.Delete(d.bins, old, old+1)
	}
}

// dirtyFit is a snapshot of the curve for one decision.
type dirtyFit struct {
	bins   []dirtyBin
	w      []float64 // each bin's weight: recency times samples
	lo, hi float64   // observed range of T in seconds
	n      int       // samples behind the curve
}

func (d *dirtyCurve) fit(halfLife float64) dirtyFit {
	f := dirtyFit{bins: d.bins, n: d.samples}
	if len(d.bins) == 0 {
		return f
	}
	f.w = make([]float64, len(d.bins))
	f.lo, f.hi = math.Inf(1), math.Inf(-1)
	for i, b := range d.bins {
		f.w[i] = math.Exp2(-(d.clock-b.seen)/halfLife) * float64(b.n) / fullBin
		if f.w[i] >= staleWeight || b.seen == d.clock {
			f.lo, f.hi = min(f.lo, math.Exp(b.x)), max(f.hi, math.Exp(b.x))
		}
	}
	return f
}

// local fits ln C = ln a + b·ln T around x0 = ln T by weighted least squares,
// the weights falling off with the distance from x0, the slope pulled
// towards 1 by a ridge term worth `ridge` of a fresh full bin, and kept in
// [minExponent, 1].
func (f *dirtyFit) local(x0 float64) (lna, b float64) {
	var sw, sx, sy float64
	var k [maxBins + 1]float64
	for i, bin := range f.bins {
		u := (bin.x - x0) / kernelWidth
		if u*u > 2*kernelCutoff {
			continue // weighs less than e^−kernelCutoff: nothing
		}
		k[i] = f.w[i] * math.Exp(-u*u/2)
		sw += k[i]
		sx += k[i] * bin.x
		sy += k[i] * bin.y
	}
	if sw < minKernelMass { // every bin is far or stale: the nearest one, linear
		near := 0
		for i, bin := range f.bins {
			if math.Abs(bin.x-x0) < math.Abs(f.bins[near].x-x0) {
				near = i
			}
		}
		return f.bins[near].y - f.bins[near].x, 1
	}
	mx, my := sx/sw, sy/sw
	var sxx, sxy float64
	for i, bin := range f.bins {
		sxx += k[i] * (bin.x - mx) * (bin.x - mx)
		sxy += k[i] * (bin.x - mx) * (bin.y - my)
	}
	b = min(max((sxy+ridge)/(sxx+ridge), minExponent), 1)
	return my - b*mx, b
}

// changed is the predicted number of bytes changed in an epoch of T
// seconds: the local power law within the observed range and below it,
// linear growth beyond its top.
func (f *dirtyFit) changed(T float64) float64 {
	if f.n == 0 || len(f.bins) == 0 || !(T > 0) {
		return 0
	}
	if T > f.hi {
		return f.changed(f.hi) * (T / f.hi)
	}
	x := math.Log(max(T, f.lo))
	lna, b := f.local(x)
	return math.Exp(lna + b*math.Log(T))
}

// levelStats are what the epochs sent at one level showed.
type levelStats struct {
	ratio ewma    // wire bytes per raw byte (after dedup)
	speed logEWMA // raw bytes compressed per CPU second
}

// median returns the median of xs (which it sorts a copy of).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// nearestMeasured is the level closest to l (the cheaper one on a tie)
// among the compressing levels whose estimate ok reports known, or -1.
func nearestMeasured(l Level, ok func(Level) bool) int {
	for d := 0; d < NumLevels; d++ {
		for _, c := range []int{int(l) - d, int(l) + d} {
			if c >= int(LevelFast) && c < NumLevels && ok(Level(c)) {
				return c
			}
		}
	}
	return -1
}
