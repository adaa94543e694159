package epochctl

import (
	"testing"
	"time"
)

func TestCombine(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		name    string
		members []Observation
		want    Observation
	}{
		{"none", nil, Observation{}},
		{"one", []Observation{{Cut: t0, Committed: t0.Add(time.Second), Interval: 10 * time.Second, ChangedBytes: 5, WireBytes: 4, SendTime: time.Second, Level: LevelFast}},
			Observation{Cut: t0, Committed: t0.Add(time.Second), Interval: 10 * time.Second, ChangedBytes: 5, WireBytes: 4, SendTime: time.Second, Level: LevelFast}},
		{"sum, oldest cut, latest commit, longest send", []Observation{
			{Cut: t0.Add(time.Second), Committed: t0.Add(3 * time.Second), Interval: 10 * time.Second, ChangedBytes: 100, DedupedBytes: 10, WireBytes: 50, SendTime: 2 * time.Second, CPUTime: time.Second},
			{Cut: t0, Committed: t0.Add(2 * time.Second), Interval: 9 * time.Second, ChangedBytes: 300, DedupedBytes: 30, WireBytes: 150, SendTime: time.Second, CPUTime: time.Second},
		}, Observation{Cut: t0, Committed: t0.Add(3 * time.Second), Interval: 10 * time.Second, ChangedBytes: 400, DedupedBytes: 40, WireBytes: 200, SendTime: 2 * time.Second, CPUTime: 2 * time.Second}},
		{"nonsense sizes are left out", []Observation{
			{ChangedBytes: -5, DedupedBytes: 7, WireBytes: -1},
			{ChangedBytes: 10, DedupedBytes: 20, WireBytes: 3},
		}, Observation{ChangedBytes: 10, DedupedBytes: 10, WireBytes: 3}},
		{"mixed levels are unknown", []Observation{{Level: LevelNone}, {Level: LevelFast}}, Observation{Level: NumLevels}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Combine(tc.members); got != tc.want {
				t.Errorf("Combine:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
