package epochctl

import (
	"math/rand/v2"
	"testing"
	"time"
)

// The worst case for a decision: a full curve (every bin in use) and a wide
// range of intervals to scan.
func BenchmarkDecideFullCurve(b *testing.B) {
	ctl := mustNew(b, Config{RPOTarget: time.Hour, MinInterval: time.Second, MaxInterval: 30 * 24 * time.Hour, StartLevel: LevelFast})
	rng := rand.New(rand.NewPCG(1, 2))
	cut := simTime(0)
	for range 500 {
		iv := time.Duration(float64(time.Second) * float64(int64(1)<<rng.IntN(30)) * (1 + rng.Float64()))
		cut = cut.Add(iv)
		ctl.Observe(Observation{Cut: cut, Committed: cut.Add(time.Second), Interval: iv, ChangedBytes: rng.Int64N(1 << 40),
			WireBytes: rng.Int64N(1 << 39), SendTime: time.Second, CPUTime: time.Second / 2, Level: Level(rng.IntN(NumLevels))})
	}
	b.ResetTimer()
	for range b.N {
		ctl.Decide(cut.Add(time.Second))
	}
}

func BenchmarkObserve(b *testing.B) {
	ctl := mustNew(b, testConfig())
	cut := simTime(0)
	for i := range b.N {
		cut = cut.Add(10 * time.Second)
		ctl.Observe(Observation{Cut: cut, Committed: cut.Add(time.Second), Interval: time.Duration(5+i%20) * time.Second,
			ChangedBytes: 100e6, WireBytes: 50e6, SendTime: time.Second, CPUTime: time.Second / 4, Level: LevelFast})
	}
}
