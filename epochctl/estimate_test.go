package epochctl

import (
	"math"
	"testing"
	"time"
)

func near(got, want, tol float64) bool {
	if want == 0 {
		return math.Abs(got) <= tol
	}
	return math.Abs(got-want) <= tol*math.Abs(want)
}

func mustNew(t testing.TB, c Config) *Controller {
	t.Helper()
	ctl, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return ctl
}

func testConfig() Config {
	return Config{RPOTarget: time.Minute, MinInterval: 5 * time.Second, MaxInterval: 2 * time.Minute, StartLevel: LevelFast}
}

func TestGoodputEstimate(t *testing.T) {
	type sample struct {
		v     float64
		lower bool
	}
	cfg := testConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		samples []sample
		want    float64
	}{
		{"none", nil, 0},
		{"first sample", []sample{{10e6, false}}, 10e6},
		{"first lower bound still counts", []sample{{1e6, true}}, 1e6},
		{"steady", []sample{{10e6, false}, {10e6, false}, {10e6, false}}, 10e6},
		{"drop believed at AlphaDown", []sample{{16e6, false}, {4e6, false}}, 16e6 * math.Pow(0.25, 0.6)},
		{"rise believed at AlphaUp", []sample{{4e6, false}, {16e6, false}}, 4e6 * math.Pow(4, 0.25)},
		{"lower bound below is ignored", []sample{{10e6, false}, {1e6, true}}, 10e6},
		{"lower bound above raises", []sample{{10e6, false}, {40e6, true}}, 10e6 * math.Pow(4, 0.25)},
		{"outlier clipped to 1/8", []sample{{10e6, false}, {1, false}}, 10e6 * math.Pow(1.0/8, 0.6)},
		{"outlier clipped to 8", []sample{{10e6, false}, {1e15, false}}, 10e6 * math.Pow(8, 0.25)},
		{"zero, negative, NaN, Inf ignored", []sample{{10e6, false}, {0, false}, {-5, false}, {math.NaN(), false}, {math.Inf(1), false}}, 10e6},
	} {
		var g goodput
		for _, s := range tc.samples {
			g.add(s.v, s.lower, &cfg)
		}
		if got := g.value(); !near(got, tc.want, 1e-9) {
			t.Errorf("%s: goodput %v, want %v", tc.name, got, tc.want)
		}
	}
}

// curveOf returns the fit of a curve fed C(T) = a·T^b at the intervals.
func curveOf(a, b float64, intervals ...float64) dirtyFit {
	var d dirtyCurve
	for _, T := range intervals {
		d.add(T, a*math.Pow(T, b), DefaultSmoothing)
	}
	return d.fit(DefaultCurveHalfLife.Seconds())
}

func TestDirtyCurve(t *testing.T) {
	spread := []float64{5, 7, 10, 14, 20, 28, 40, 56, 80}
	for _, tc := range []struct {
		name   string
		fit    dirtyFit
		T      float64
		want   float64 // C(T)
		wantB  float64 // local exponent at T (within the range)
		tolC   float64
		tolB   float64
		lo, hi float64
	}{
		{name: "empty", fit: curveOf(1, 1), T: 10, want: 0},
		{name: "one point: linear", fit: curveOf(1e6, 1, 10), T: 20, want: 20e6, wantB: 1, tolC: 1e-9, lo: 10, hi: 10},
		{name: "one point at a long interval: linear below", fit: curveOf(1e8, 0.5, 100), T: 25, want: 1e9 * 25 / 100, wantB: 1, tolC: 1e-9},
		{name: "one interval many times: linear", fit: curveOf(1e6, 0.5, 10, 10, 10, 10), T: 40, want: 1e6 * math.Sqrt(10) * 4, wantB: 1, tolC: 1e-9},
		{name: "linear data", fit: curveOf(2e6, 1, spread...), T: 30, want: 60e6, wantB: 1, tolC: 1e-6, tolB: 1e-6},
		{name: "square root data recovered", fit: curveOf(1e7, 0.5, spread...), T: 30, want: 1e7 * math.Sqrt(30), wantB: 0.5, tolC: 0.03, tolB: 0.08},
		{name: "exponent kept ≥ 0.25", fit: curveOf(1e7, 0.1, spread...), T: 30, wantB: 0.25, tolB: 1e-9, want: 1e7 * math.Pow(30, 0.1), tolC: 0.15},
		{name: "beyond the range: linear from the top", fit: curveOf(1e7, 0.5, spread...), T: 160, want: 1e7 * math.Sqrt(80) * 2, tolC: 0.05},
		{name: "below the range: the local power law", fit: curveOf(1e7, 0.5, spread...), T: 2.5, want: 1e7 * math.Sqrt(2.5), tolC: 0.1},
		{name: "range", fit: curveOf(1, 1, 7, 3, 50), T: 1, want: 1, tolC: 1e-9, lo: 3, hi: 50},
	} {
		got := tc.fit.changed(tc.T)
		if !near(got, tc.want, tc.tolC) {
			t.Errorf("%s: C(%v) = %.4g, want %.4g", tc.name, tc.T, got, tc.want)
		}
		if tc.wantB != 0 {
			_, b := tc.fit.local(math.Log(min(max(tc.T, tc.fit.lo), tc.fit.hi)))
			if !near(b, tc.wantB, tc.tolB) {
				t.Errorf("%s: exponent %.3f, want %.3f", tc.name, b, tc.wantB)
			}
		}
		if tc.lo != 0 && (!near(tc.fit.lo, tc.lo, 1e-9) || !near(tc.fit.hi, tc.hi, 1e-9)) {
			t.Errorf("%s: range [%v, %v], want [%v, %v]", tc.name, tc.fit.lo, tc.fit.hi, tc.lo, tc.hi)
		}
	}
}

// A working set saturates: the local exponent falls with the interval.
func TestDirtyCurveIsLocal(t *testing.T) {
	ws := func(T float64) float64 { return 500e6*(1-math.Exp(-T/20)) + 1e6*T }
	var d dirtyCurve
	for range 3 {
		for T := 2.0; T <= 300; T *= 1.2 {
			d.add(T, ws(T), DefaultSmoothing)
		}
	}
	f := d.fit(DefaultCurveHalfLife.Seconds())
	for _, T := range []float64{3, 10, 30, 100, 250} {
		if got := f.changed(T); !near(got, ws(T), 0.1) {
			t.Errorf("C(%v) = %.4g, want %.4g", T, got, ws(T))
		}
	}
	_, b5 := f.local(math.Log(5))
	_, b60 := f.local(math.Log(60))
	if !(b5 > 0.8 && b60 < 0.5) {
		t.Errorf("local exponents %.2f at 5s, %.2f at 60s", b5, b60)
	}
}

// Bins not refreshed fade in guest time and stop extending the range.
func TestDirtyCurveForgets(t *testing.T) {
	var d dirtyCurve
	d.add(600, 1e9, DefaultSmoothing) // one long epoch, an outage
	for range 4000 {                  // then 5.5 h of 5 s epochs
		d.add(5, 1e8, DefaultSmoothing)
	}
	f := d.fit(time.Hour.Seconds())
	if f.hi != 5 || f.lo != 5 {
		t.Errorf("range [%v, %v] after the long epoch went stale", f.lo, f.hi)
	}
	if got := f.changed(10); !near(got, 2e8, 1e-6) {
		t.Errorf("C(10) = %.4g: the stale bin still counts", got)
	}
	for range 200 {
		d.add(math.Exp(float64(len(d.bins))), 1, DefaultSmoothing)
	}
	if len(d.bins) > maxBins {
		t.Errorf("%d bins", len(d.bins))
	}
}

func TestOutlierClipped(t *testing.T) {
	ctl := mustNew(t, testConfig())
	for i := range 5 {
		ctl.Observe(Observation{Interval: 10 * time.Second, ChangedBytes: 100e6, Level: LevelFast, Cut: simTime(float64(10 * i))})
	}
	ctl.Observe(Observation{Interval: 10 * time.Second, ChangedBytes: 100e9, Level: LevelFast, Cut: simTime(50)})
	f := ctl.dirty.fit(ctl.halfLife())
	// The bin at 10 s moved towards 400 MB (clipped), not towards 100 GB.
	want := math.Exp(math.Log(100e6) + DefaultSmoothing*math.Log(outlierFactor))
	if got := f.changed(10); !near(got, want, 1e-6) {
		t.Errorf("C(10) after an outlier = %.4g, want %.4g", got, want)
	}
}

func TestLevelEstimates(t *testing.T) {
	obs := func(l Level, raw, wire int64, cpu time.Duration) Observation {
		return Observation{Interval: 10 * time.Second, ChangedBytes: raw, WireBytes: wire, CPUTime: cpu, Level: l}
	}
	for _, tc := range []struct {
		name      string
		obs       []Observation
		ratio     [NumLevels]float64
		speed     [NumLevels]float64
		measured  [NumLevels]bool
		dedup     float64
		tolerance float64
	}{
		{
			name:  "nothing observed: priors, no CPU model",
			ratio: priorRatio,
		},
		{
			name:     "fast measured: others scaled from it",
			obs:      []Observation{obs(LevelFast, 100e6, 30e6, time.Second)},
			ratio:    [NumLevels]float64{1, 0.3, 0.3 * 0.48 / 0.55, 0.3 * 0.43 / 0.55},
			speed:    [NumLevels]float64{0, 100e6, 100e6 * 120 / 400, 100e6 * 35 / 400},
			measured: [NumLevels]bool{false, true, false, false},
		},
		{
			name:     "nearest measured, the cheaper on a tie",
			obs:      []Observation{obs(LevelFast, 100e6, 50e6, 0), obs(LevelBetter, 100e6, 20e6, 0)},
			ratio:    [NumLevels]float64{1, 0.5, 0.5 * 0.48 / 0.55, 0.2},
			measured: [NumLevels]bool{false, true, false, true},
		},
		{
			name:     "none measured: framing overhead; its CPU time is no compressor speed",
			obs:      []Observation{obs(LevelNone, 100e6, 101e6, time.Second)},
			ratio:    [NumLevels]float64{1.01, 0.55, 0.48, 0.43},
			measured: [NumLevels]bool{true, false, false, false},
		},
		{
			name:     "EWMA of the ratio",
			obs:      []Observation{obs(LevelFast, 100e6, 40e6, 0), obs(LevelFast, 100e6, 60e6, 0)},
			ratio:    [NumLevels]float64{1, 0.45, 0.45 * 0.48 / 0.55, 0.45 * 0.43 / 0.55},
			measured: [NumLevels]bool{false, true, false, false},
		},
		{
			name:     "small epochs say nothing",
			obs:      []Observation{obs(LevelFast, 1000, 10, time.Millisecond)},
			ratio:    priorRatio,
			measured: [NumLevels]bool{},
		},
		{
			name: "dedup",
			obs: []Observation{
				{Interval: time.Second, ChangedBytes: 100e6, DedupedBytes: 20e6, WireBytes: 40e6, Level: LevelFast},
				{Interval: time.Second, ChangedBytes: 100e6, DedupedBytes: 60e6, WireBytes: 20e6, Level: LevelFast},
			},
			dedup:    0.3,
			ratio:    [NumLevels]float64{1, 0.5, 0.5 * 0.48 / 0.55, 0.5 * 0.43 / 0.55},
			measured: [NumLevels]bool{false, true, false, false},
		},
		{
			name:     "nonsense: deduped above changed, negative wire",
			obs:      []Observation{{Interval: time.Second, ChangedBytes: 100e6, DedupedBytes: 200e6, WireBytes: -5, Level: LevelFast}},
			dedup:    1 - 0.01, // clamped
			ratio:    priorRatio,
			measured: [NumLevels]bool{},
		},
	} {
		ctl := mustNew(t, testConfig())
		for _, o := range tc.obs {
			ctl.Observe(o)
		}
		m := ctl.model()
		for l := range Level(NumLevels) {
			if !near(m.ratio[l], tc.ratio[l], 1e-9) || !near(m.speed[l], tc.speed[l], 1e-9) || m.measured[l] != tc.measured[l] {
				t.Errorf("%s: level %s: ratio %.4g speed %.4g measured %v, want %.4g %.4g %v",
					tc.name, l, m.ratio[l], m.speed[l], m.measured[l], tc.ratio[l], tc.speed[l], tc.measured[l])
			}
		}
		if !near(m.dedup, tc.dedup, 1e-9) {
			t.Errorf("%s: dedup %v, want %v", tc.name, m.dedup, tc.dedup)
		}
	}
}

func TestOverheadAndGoodputFromObservations(t *testing.T) {
	for _, tc := range []struct {
		name     string
		obs      []Observation
		overhead float64
		goodput  float64
		capped   bool
		cap      float64
	}{
		{
			name:     "send time and overhead",
			obs:      []Observation{{Cut: simTime(0), Committed: simTime(12), SendTime: 10 * time.Second, WireBytes: 100e6}},
			overhead: 2, goodput: 10e6,
		},
		{
			name: "median overhead ignores one long commit",
			obs: []Observation{
				{Cut: simTime(0), Committed: simTime(11), SendTime: 10 * time.Second, WireBytes: 100e6},
				{Cut: simTime(20), Committed: simTime(331), SendTime: 10 * time.Second, WireBytes: 100e6},
				{Cut: simTime(40), Committed: simTime(51), SendTime: 10 * time.Second, WireBytes: 100e6},
			},
			overhead: 1, goodput: 10e6,
		},
		{
			name:     "no send time: cut to commit less the overhead known",
			obs:      []Observation{{Cut: simTime(0), Committed: simTime(20), WireBytes: 100e6}},
			overhead: 0, goodput: 5e6,
		},
		{
			name:    "CPU-bound epoch is a lower bound",
			obs:     []Observation{{SendTime: 10 * time.Second, WireBytes: 100e6}, {SendTime: 10 * time.Second, CPUTime: 10 * time.Second, WireBytes: 10e6}},
			goodput: 10e6,
		},
		{
			name: "commit before cut is ignored",
			obs:  []Observation{{Cut: simTime(10), Committed: simTime(5), WireBytes: 100e6}},
		},
		{
			name:    "cap below the measurement",
			obs:     []Observation{{SendTime: 10 * time.Second, WireBytes: 100e6}},
			cap:     4e6,
			goodput: 4e6, capped: true,
		},
		{
			name:    "cap with nothing measured",
			cap:     4e6,
			goodput: 4e6, capped: true,
		},
		{
			name:    "cap above the measurement",
			obs:     []Observation{{SendTime: 10 * time.Second, WireBytes: 100e6}},
			cap:     40e6,
			goodput: 10e6,
		},
	} {
		cfg := testConfig()
		cfg.BandwidthCap = tc.cap
		ctl := mustNew(t, cfg)
		for _, o := range tc.obs {
			ctl.Observe(o)
		}
		m := ctl.model()
		if !near(m.overhead, tc.overhead, 1e-9) || !near(m.goodput, tc.goodput, 1e-9) || m.capped != tc.capped {
			t.Errorf("%s: overhead %v goodput %v capped %v, want %v %v %v", tc.name, m.overhead, m.goodput, m.capped, tc.overhead, tc.goodput, tc.capped)
		}
	}
}

func TestIntervalDerivedFromCuts(t *testing.T) {
	ctl := mustNew(t, testConfig())
	ctl.Observe(Observation{Cut: simTime(0)})
	ctl.Observe(Observation{Cut: simTime(30), ChangedBytes: 300e6})
	if ctl.last.interval != 30 || ctl.dirty.samples != 1 {
		t.Fatalf("interval %v, %d samples", ctl.last.interval, ctl.dirty.samples)
	}
	// An older cut than the latest does not move the last cut back.
	ctl.Observe(Observation{Cut: simTime(10), Interval: 5 * time.Second, ChangedBytes: 1})
	if !ctl.lastCut.Equal(simTime(30)) {
		t.Errorf("last cut %v", ctl.lastCut)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1}, 2}, {[]float64{5, 1, 100}, 5}} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
