package epochctl

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		errs []string // substrings of the error, none if valid
		want func(Config) bool
	}{
		{name: "defaults", cfg: Config{RPOTarget: time.Minute}, want: func(c Config) bool {
			return c.MinInterval == 10*time.Second && c.MaxInterval == time.Minute && len(c.Levels) == NumLevels &&
				c.Margin == DefaultMargin && c.TargetBusy == DefaultTargetBusy && c.MaxBusy == DefaultMaxBusy &&
				c.StepFactor == 2 && c.CurveHalfLife == DefaultCurveHalfLife && c.StartLevel == LevelNone
		}},
		{name: "short target: min interval a quarter", cfg: Config{RPOTarget: 20 * time.Second}, want: func(c Config) bool {
			return c.MinInterval == 5*time.Second && c.MaxInterval == 20*time.Second
		}},
		{name: "max beyond the target is allowed", cfg: Config{RPOTarget: time.Minute, MaxInterval: time.Hour}},
		{name: "no target", cfg: Config{}, errs: []string{"RPOTarget", "must be positive"}},
		{name: "negative target", cfg: Config{RPOTarget: -time.Second}, errs: []string{"RPOTarget"}},
		{name: "min at the target", cfg: Config{RPOTarget: time.Minute, MinInterval: time.Minute}, errs: []string{"MinInterval", "no room"}},
		{name: "negative min", cfg: Config{RPOTarget: time.Minute, MinInterval: -1}, errs: []string{"MinInterval", "positive"}},
		{name: "max below min", cfg: Config{RPOTarget: time.Minute, MinInterval: 20 * time.Second, MaxInterval: 10 * time.Second}, errs: []string{"MaxInterval", "below MinInterval"}},
		{name: "huge max", cfg: Config{RPOTarget: time.Minute, MaxInterval: 1 << 62}, errs: []string{"MaxInterval", "above"}},
		{name: "negative cap", cfg: Config{RPOTarget: time.Minute, BandwidthCap: -1}, errs: []string{"BandwidthCap"}},
		{name: "NaN cap", cfg: Config{RPOTarget: time.Minute, BandwidthCap: math.NaN()}, errs: []string{"BandwidthCap"}},
		{name: "unknown level", cfg: Config{RPOTarget: time.Minute, Levels: []Level{LevelFast, 9}, StartLevel: LevelFast}, errs: []string{"unknown level 9"}},
		{name: "start level not allowed", cfg: Config{RPOTarget: time.Minute, Levels: []Level{LevelFast}}, errs: []string{"StartLevel", "none"}},
		{name: "margin", cfg: Config{RPOTarget: time.Minute, Margin: 1.5}, errs: []string{"Margin"}},
		{name: "busy order", cfg: Config{RPOTarget: time.Minute, TargetBusy: 0.9, MaxBusy: 0.85}, errs: []string{"MaxBusy", "below TargetBusy"}},
		{name: "NaN fraction", cfg: Config{RPOTarget: time.Minute, AlphaUp: math.NaN()}, errs: []string{"AlphaUp"}},
		{name: "step", cfg: Config{RPOTarget: time.Minute, StepFactor: 1}, errs: []string{"StepFactor"}},
		{name: "half-life", cfg: Config{RPOTarget: time.Minute, CurveHalfLife: time.Millisecond}, errs: []string{"CurveHalfLife"}},
		{name: "all wrong at once", cfg: Config{MinInterval: -1, BandwidthCap: -1}, errs: []string{"RPOTarget", "MinInterval", "BandwidthCap"}},
	} {
		err := tc.cfg.Validate()
		if len(tc.errs) == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			} else if tc.want != nil && !tc.want(tc.cfg) {
				t.Errorf("%s: defaults %+v", tc.name, tc.cfg)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: valid", tc.name)
			continue
		}
		for _, s := range tc.errs {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %q does not say %q", tc.name, err, s)
			}
		}
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New accepted an empty config")
	}
}

func TestNewCopiesLevels(t *testing.T) {
	levels := []Level{LevelNone, LevelFast}
	ctl := mustNew(t, Config{RPOTarget: time.Minute, Levels: levels})
	levels[0] = LevelBetter
	if got := ctl.Config().Levels; got[0] != LevelNone {
		t.Errorf("the controller shares the caller's slice: %v", got)
	}
}

func TestLevelText(t *testing.T) {
	for l := range Level(NumLevels) {
		b, err := l.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Level
		if err := back.UnmarshalText(b); err != nil || back != l {
			t.Errorf("%s: round trip %v %v", l, back, err)
		}
	}
	bad := Level(NumLevels)
	if bad.Valid() || bad.String() != "Level(4)" {
		t.Errorf("level 4: %v %s", bad.Valid(), bad)
	}
	if _, err := bad.MarshalText(); err == nil {
		t.Error("marshalled level 4")
	}
	var l Level
	if err := l.UnmarshalText([]byte("max")); err == nil {
		t.Error("parsed max")
	}
}

func TestGrid(t *testing.T) {
	for _, tc := range []struct {
		in, up, down, nearest float64
	}{
		{5, 5, 5, 5},
		{5.0000001, 5, 5, 5},
		{5.34, 5.4, 5.3, 5.3},
		{17.2, 18, 17, 17},
		{243, 250, 240, 240},
		{0.123, 0.13, 0.12, 0.12},
		{99.5, 100, 99, 99},
	} {
		up, down, n := grid(tc.in, true), grid(tc.in, false), nearestGrid(tc.in)
		if !near(up, tc.up, 1e-9) || !near(down, tc.down, 1e-9) || !near(n, tc.nearest, 1e-9) {
			t.Errorf("grid(%v) = %v, %v, %v; want %v, %v, %v", tc.in, up, down, n, tc.up, tc.down, tc.nearest)
		}
	}
}

// modelOf is a model with the curve C(T) = a·T^b (fed over a spread of
// intervals) and the given link.
func modelOf(a, b, g, overhead float64) *model {
	f := curveOf(a, b, 10)
	if b != 1 {
		f = curveOf(a, b, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 90, 128)
	}
	return &model{fit: f, goodput: g, overhead: overhead, ratio: [NumLevels]float64{1, 0.5, 0.45, 0.4}}
}

func TestPlanLevel(t *testing.T) {
	for _, tc := range []struct {
		name     string
		target   time.Duration
		m        *model
		level    Level
		kind     PlanKind
		interval float64
		lag      float64
		tol      float64
	}{
		{name: "headroom: the shortest interval", m: modelOf(1e6, 1, 10e6, 0.1),
			kind: PlanHeadroom, interval: 5, lag: 5 + 0.1 + 0.5},
		{name: "link-bound: busy at 80%", m: modelOf(6e6, 1, 10e6, 2),
			kind: PlanLinkBound, interval: 10, lag: 10 + 2 + 6},
		{name: "tight: the longest interval meeting the goal", target: 30 * time.Second, m: modelOf(7e6, 1, 10e6, 2),
			kind: PlanTight, interval: 14, lag: 14 + 2 + 9.8},
		{name: "lag breach: the shortest workable interval", target: 20 * time.Second, m: modelOf(7e6, 1, 10e6, 5),
			kind: PlanLagBreach, interval: 20, lag: 20 + 5 + 14},
		{name: "overloaded: above MaxBusy everywhere, still keeping up", m: modelOf(9.6e6, 1, 10e6, 0.1),
			kind: PlanOverloaded, interval: 120, lag: 120 + 0.1 + 115.2},
		{name: "unstable: the longest interval", m: modelOf(15e6, 1, 10e6, 0),
			kind: PlanUnstable, interval: 120, lag: 120 + 180},
		{name: "coalescing makes a slow link workable", m: modelOf(20e6, 0.5, 10e6, 0.5),
			kind: PlanLinkBound, interval: 7.5, lag: 7.5 + 0.5 + 2*math.Sqrt(7.5), tol: 0.02}, // 0.8·T = 0.5 + 2√T at T ≈ 7.45
		{name: "compression shrinks the bytes", level: LevelFast, m: modelOf(12e6, 1, 10e6, 2),
			kind: PlanLinkBound, interval: 10, lag: 10 + 2 + 6},
		{name: "cpu-bound", level: LevelFast, m: func() *model {
			m := modelOf(1e7, 0.5, 1e9, 0.1)
			m.speed[LevelFast] = 4e6 // P/T = 2.5/√T ≤ 0.5 from T = 25
			return m
		}(), kind: PlanCPUBound, interval: 25, lag: 25 + 0.1 + 12.5, tol: 0.1},
		{name: "cpu-overload", level: LevelFast, m: func() *model {
			m := modelOf(6e6, 1, 1e9, 0.1)
			m.speed[LevelFast] = 10e6
			return m
		}(), kind: PlanCPUOverload, interval: 120, lag: 120 + 0.1 + 72},
		{name: "goodput unknown: only the overhead", m: modelOf(6e6, 1, 0, 1),
			kind: PlanHeadroom, interval: 5, lag: 6},
	} {
		cfg := testConfig()
		if tc.target != 0 {
			cfg.RPOTarget = tc.target
		}
		ctl := mustNew(t, cfg)
		cands := candidates(5, 120)
		changed := make([]float64, len(cands))
		for i, T := range cands {
			changed[i] = tc.m.fit.changed(T)
		}
		p := ctl.planLevel(tc.m, tc.level, cands, changed)
		if p.kind != tc.kind || !near(p.p.T, tc.interval, tc.tol+1e-9) || !near(p.p.Lag, tc.lag, tc.tol+1e-6) {
			t.Errorf("%s: %s %.4gs lag %.4gs, want %s %.4gs lag %.4gs", tc.name, p.kind, p.p.T, p.p.Lag, tc.kind, tc.interval, tc.lag)
		}
		if tc.kind == PlanUnstable && !near(p.grow, 0.5, 1e-9) {
			t.Errorf("%s: growth %v", tc.name, p.grow)
		}
	}
}

func TestChooseLevel(t *testing.T) {
	type pl struct {
		kind PlanKind
		lag  float64
	}
	mk := func(ps ...pl) []plan {
		var out []plan
		for i, p := range ps {
			q := plan{level: Level(i), kind: p.kind, p: prediction{T: 10, Lag: p.lag}}
			if p.kind == PlanUnstable {
				q.grow = p.lag
			}
			out = append(out, q)
		}
		return out
	}
	H, L, T, U := PlanHeadroom, PlanLinkBound, PlanTight, PlanUnstable
	for _, tc := range []struct {
		name  string
		plans []plan
		cur   Level
		want  Level
	}{
		{"fast link: current level kept, none 14% behind", mk(pl{H, 6.4}, pl{H, 5.75}, pl{H, 5.7}, pl{H, 5.6}), LevelFast, LevelFast},
		{"fast link: a costly level gives way to a cheaper one within 10%", mk(pl{H, 6.4}, pl{H, 5.75}, pl{H, 5.7}, pl{H, 5.6}), LevelBetter, LevelFast},
		{"fast link: the cheapest within 10%", mk(pl{H, 5.9}, pl{H, 5.75}, pl{H, 5.7}, pl{H, 5.6}), LevelBetter, LevelNone},
		{"slow link: current 30% behind, the cheapest within 10% of the best", mk(pl{L, 30}, pl{L, 26}, pl{L, 22}, pl{L, 20}), LevelFast, LevelDefault},
		{"slow link: stays", mk(pl{L, 30}, pl{L, 26}, pl{L, 22}, pl{L, 20}), LevelDefault, LevelDefault},
		{"band: 17% behind stays, 15% cheaper does not come in", mk(pl{L, 30}, pl{L, 23}, pl{L, 23.5}, pl{L, 20}), LevelDefault, LevelDefault},
		{"within TargetBusy beats tight", mk(pl{H, 10}, pl{T, 8}, pl{T, 7}, pl{T, 7}), LevelFast, LevelNone},
		{"tight beats unstable", mk(pl{U, 1}, pl{U, 0.5}, pl{T, 48}, pl{T, 45}), LevelNone, LevelDefault},
		{"all unstable: least growth within 10%", mk(pl{U, 1}, pl{U, 0.5}, pl{U, 0.3}, pl{U, 0.28}), LevelNone, LevelDefault},
		{"current level not allowed", mk(pl{L, 30}, pl{L, 20})[1:], LevelNone, LevelFast},
	} {
		ctl := mustNew(t, testConfig())
		if got := tc.plans[ctl.chooseLevel(tc.plans, tc.cur)].level; got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

// epochSpec describes identical epochs to feed a controller.
type epochSpec struct {
	iv, changed, wire, send, over, cpu float64
	level                              Level
}

// feed observes n epochs after a cut at start and returns the last cut and
// commit.
func feed(ctl *Controller, start float64, n int, e epochSpec) (cut, commit float64) {
	cut = start
	for range n {
		cut += e.iv
		commit = cut + e.over + e.send
		ctl.Observe(Observation{
			Cut: simTime(cut), Committed: simTime(commit), Interval: time.Duration(e.iv * 1e9),
			ChangedBytes: int64(e.changed), WireBytes: int64(e.wire), SendTime: time.Duration(e.send * 1e9),
			CPUTime: time.Duration(e.cpu * 1e9), Level: e.level,
		})
	}
	return cut, commit
}

func TestDecideStart(t *testing.T) {
	ctl := mustNew(t, testConfig())
	d := ctl.Decide(simTime(0))
	if d.Kind != PlanStart || d.Interval != 5*time.Second || d.Level != LevelFast || !d.NextCut.Equal(simTime(0)) || d.Breach ||
		!strings.HasPrefix(d.Reason, "start: ") {
		t.Errorf("%+v", d)
	}
	// The first, full epoch has no interval: still the start.
	ctl.Observe(Observation{Cut: simTime(0), Committed: simTime(400), ChangedBytes: 8 << 30, WireBytes: 4 << 30, SendTime: 399 * time.Second, Level: LevelFast})
	d = ctl.Decide(simTime(400))
	if d.Kind != PlanStart || !d.NextCut.Equal(simTime(400)) || !d.Breach || !strings.Contains(d.Reason, "covers 6m40s since the last cut") {
		t.Errorf("after the full epoch: %+v", d)
	}
	checkDecision(t, ctl.Config(), d, simTime(0), simTime(400))
}

// The example of the brief, to the letter: 3.1 MB/s of wire bytes per
// second of guest time against 2.4 MB/s of goodput.
func TestDecideUnstableReason(t *testing.T) {
	cfg := Config{RPOTarget: time.Minute, MinInterval: 5 * time.Second, Levels: []Level{LevelNone}}
	ctl := mustNew(t, cfg)
	_, commit := feed(ctl, 0, 5, epochSpec{iv: 10, changed: 31e6, wire: 31e6, send: 31e6 / 2.4e6, level: LevelNone})
	d := ctl.Decide(simTime(commit))
	want := "breach: dirty 3.1 MB/s after dedup+compression exceeds goodput 2.4 MB/s: the backlog grows ~0.29 s of sending per second, and the lag without bound (45.8s after 20s epochs) (stepping from 10s towards 1m0s)"
	if d.Reason != want || !d.Breach || d.Kind != PlanUnstable || d.Interval != 20*time.Second || !near(d.Estimates.LagGrowth, 3.1/2.4-1, 1e-6) {
		t.Errorf("got  %q (%s, %s)\nwant %q", d.Reason, d.Kind, d.Interval, want)
	}
}

func TestDecideNextCut(t *testing.T) {
	spec := epochSpec{iv: 5, changed: 5e6, wire: 5e6, send: 0.5, over: 0.1, level: LevelNone}
	for _, tc := range []struct {
		name    string
		now     float64 // after the last commit
		next    float64 // after the last cut
		lag     float64 // predicted, seconds
		breach  bool
		reasonS string
	}{
		{"at the commit: the interval after the last cut", 0, 5, 5 + 0.1 + 0.5, false, "headroom: 5s epochs at none"},
		{"late: at once", 10, 10.6, 10.6 + 0.1 + 10.6*0.1, false, "headroom"},
		{"very late: at once, and a breach", 100, 100.6, 100.6 + 0.1 + 100.6*0.1, true, "breach: the next epoch covers 1m41s since the last cut, so its commit is predicted at lag 1m51s > 54s; then headroom"},
	} {
		ctl := mustNew(t, testConfig())
		cut, commit := feed(ctl, 0, 10, spec)
		now := simTime(commit + tc.now)
		d := ctl.Decide(now)
		if !d.NextCut.Equal(simTime(cut+tc.next)) || !near(d.PredictedLag.Seconds(), tc.lag, 1e-6) || d.Breach != tc.breach ||
			!strings.Contains(d.Reason, tc.reasonS) {
			t.Errorf("%s: next +%v lag %v breach %v %q", tc.name, d.NextCut.Sub(simTime(cut)), d.PredictedLag, d.Breach, d.Reason)
		}
		checkDecision(t, ctl.Config(), d, simTime(cut), now)
		if again := ctl.Decide(now); !reflect.DeepEqual(again, d) {
			t.Errorf("%s: Decide is not repeatable:\n%+v\n%+v", tc.name, d, again)
		}
	}
}

func TestDecideSteps(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target time.Duration
		last   epochSpec // observed 10 times: 1 MB per guest second at 10 MB/s unless set
		want   time.Duration
		note   string
	}{
		{name: "at most double", last: epochSpec{iv: 5, changed: 5 * 9e6, wire: 5 * 9e6, send: 5 * 0.9, over: 0.1},
			want: 10 * time.Second, note: "stepping from 5s towards"},
		{name: "deadband", last: epochSpec{iv: 11, changed: 11 * 6e6, wire: 11 * 6e6, send: 11 * 0.6, over: 2},
			want: 11 * time.Second, note: "holding 11s: 10s is within the deadband"},
		{name: "at most halve", target: 10 * time.Minute, last: epochSpec{iv: 40, changed: 40e6, wire: 40e6, send: 4, over: 0.1},
			want: 20 * time.Second, note: "stepping from 40s towards 5s"},
		{name: "a bigger step when only that meets the target", last: epochSpec{iv: 120, changed: 120e6, wire: 120e6, send: 12, over: 0.1},
			want: 5 * time.Second},
	} {
		cfg := testConfig()
		cfg.Levels, cfg.StartLevel = []Level{LevelNone}, LevelNone
		if tc.target != 0 {
			cfg.RPOTarget, cfg.MaxInterval = tc.target, tc.target
		}
		ctl := mustNew(t, cfg)
		_, commit := feed(ctl, 0, 10, tc.last)
		d := ctl.Decide(simTime(commit))
		if d.Interval != tc.want || tc.note != "" && !strings.Contains(d.Reason, tc.note) {
			t.Errorf("%s: %s: %s", tc.name, d.Interval, d.Reason)
		}
	}
}

func TestDecideReasons(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cap    float64
		spec   epochSpec
		reason string
	}{
		{"headroom", 0, epochSpec{iv: 5, changed: 5e6, wire: 5e6, send: 0.5, over: 0.1},
			"headroom: 5s epochs at none keep the sender 12% busy; predicted lag 5.6s (target 1m0s)"},
		{"link-bound", 0, epochSpec{iv: 10, changed: 60e6, wire: 60e6, send: 6, over: 2},
			"link-bound: 10s epochs at none keep the sender 80% busy, 6.0 MB/s on the wire per guest second at goodput 10.0 MB/s; predicted lag 18s (target 1m0s)"},
		{"capped: the link does 10 MB/s", 5e6, epochSpec{iv: 10, changed: 30e6, wire: 30e6, send: 3, over: 2},
			"link-bound: 10s epochs at none keep the sender 80% busy, 3.0 MB/s on the wire per guest second at goodput 5.0 MB/s (the cap); predicted lag 18s (target 1m0s)"},
		{"tight", 0, epochSpec{iv: 29, changed: 29 * 9e6, wire: 29 * 9e6, send: 29 * 0.9, over: 0.1},
			"tight: 28s epochs at none keep the sender 90% busy (over 80%) to hold the lag at 53.3s (target 1m0s)"},
		{"lag breach", 0, epochSpec{iv: 100, changed: 100 * 9e6, wire: 100 * 9e6, send: 90, over: 5},
			"breach: the best plan, 1m50s epochs at none, predicts lag 3m34s > 54s (target 1m0s less 10% margin) at goodput 10.0 MB/s"},
		{"lag breach held", 0, epochSpec{iv: 100, changed: 100 * 9e6, wire: 100 * 9e6, send: 90, over: 4.6},
			"breach: the best plan, 1m40s epochs at none, predicts lag 3m15s > 54s (target 1m0s less 10% margin) at goodput 10.0 MB/s (holding 1m40s: 1m33s is within the deadband)"},
		{"overloaded: not held", 0, epochSpec{iv: 27, changed: 27e6, wire: 27e6, send: 13.5, over: 13},
			"breach: the best plan, 29s epochs at none, predicts lag 56.5s > 54s (target 1m0s less 10% margin) at goodput 2.0 MB/s"},
		{"overrun", 0, epochSpec{iv: 40, changed: 40 * 9e6, wire: 40 * 9e6, send: 36, over: 1},
			"breach: the next epoch covers 37s since the last cut, so its commit is predicted at lag 1m11s > 54s; then tight: 27s epochs at none keep the sender 94% busy (over 80%) to hold the lag at 52.3s (target 1m0s)"},
	} {
		cfg := testConfig()
		cfg.Levels, cfg.StartLevel, cfg.BandwidthCap = []Level{LevelNone}, LevelNone, tc.cap
		ctl := mustNew(t, cfg)
		_, commit := feed(ctl, 0, 10, tc.spec)
		d := ctl.Decide(simTime(commit))
		if d.Reason != tc.reason {
			t.Errorf("%s:\ngot  %q\nwant %q", tc.name, d.Reason, tc.reason)
		}
	}
}

// A level switch names both levels and their lags.
func TestDecideLevelSwitchReason(t *testing.T) {
	ctl := mustNew(t, testConfig())
	// Slow link, fast level: 10 MB/s of changes, half on the wire, 4 MB/s.
	_, commit := feed(ctl, 0, 10, epochSpec{iv: 20, changed: 200e6, wire: 100e6, send: 25, over: 0.5, cpu: 0.5, level: LevelFast})
	d := ctl.Decide(simTime(commit))
	if d.Level <= LevelFast || !strings.Contains(d.Reason, "; level fast→"+d.Level.String()+" (lag ") {
		t.Errorf("%s: %s", d.Level, d.Reason)
	}
}

func TestPredict(t *testing.T) {
	ctl := mustNew(t, testConfig())
	if p := ctl.Predict(10*time.Second, LevelFast); p.Changed != 0 || p.PeakLag != 10*time.Second {
		t.Errorf("nothing observed: %+v", p)
	}
	// 10 MB per guest second, about half of it on the wire at
	// 9 MB/s, 1 s of overhead, 200 MB per CPU second; the last epoch brings
	// the dedup (EWMA 0.025) and a ratio of 0.5 (EWMA 0.4625).
	feed(ctl, 0, 5, epochSpec{iv: 10, changed: 100e6, wire: 45e6, send: 5, over: 1, cpu: 0.5, level: LevelFast})
	ctl.Observe(Observation{Interval: 10 * time.Second, ChangedBytes: 100e6, DedupedBytes: 10e6, WireBytes: 45e6, Level: LevelFast})
	for _, tc := range []struct {
		iv   time.Duration
		l    Level
		want Prediction
	}{
		{20 * time.Second, LevelFast, Prediction{Interval: 20 * time.Second, Changed: 200e6, Raw: 195e6, Wire: 195e6 * 0.4625,
			CPUTime: 975 * time.Millisecond, SendTime: 10021 * time.Millisecond, Elapsed: 11021 * time.Millisecond, PeakLag: 31021 * time.Millisecond}},
		{20 * time.Second, LevelNone, Prediction{Interval: 20 * time.Second, Changed: 200e6, Raw: 195e6, Wire: 195e6,
			SendTime: 21667 * time.Millisecond, Elapsed: 22667 * time.Millisecond, PeakLag: 42667 * time.Millisecond}},
	} {
		got := ctl.Predict(tc.iv, tc.l)
		if !near(got.Changed, tc.want.Changed, 1e-6) || !near(got.Raw, tc.want.Raw, 1e-6) || !near(got.Wire, tc.want.Wire, 1e-6) ||
			(got.PeakLag-tc.want.PeakLag).Abs() > 2*time.Millisecond || (got.CPUTime-tc.want.CPUTime).Abs() > 2*time.Millisecond ||
			!near(got.Busy, got.Elapsed.Seconds()/tc.iv.Seconds(), 1e-9) {
			t.Errorf("%s at %s:\n got %+v\nwant %+v", tc.l, tc.iv, got, tc.want)
		}
	}
}
