package statuspage

import (
	"slices"
	"testing"
	"time"
)

func TestRing(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	type obs struct {
		at  int // seconds after t0
		lag time.Duration
	}
	tests := []struct {
		name string
		n    int // steps of 30 s
		add  []obs
		now  int
		want []Sample
	}{
		{name: "empty", n: 4, now: 100},
		{name: "one step keeps its largest lag", n: 4,
			add:  []obs{{0, 5 * time.Second}, {10, 15 * time.Second}, {20, 3 * time.Second}},
			now:  25,
			want: []Sample{{at(0), 15 * time.Second}}},
		{name: "one sample per step", n: 4,
			add:  []obs{{1, 1}, {31, 2}, {61, 3}},
			now:  61,
			want: []Sample{{at(0), 1}, {at(30), 2}, {at(60), 3}}},
		{name: "full ring overwrites the oldest", n: 3,
			add:  []obs{{0, 1}, {30, 2}, {60, 3}, {90, 4}, {120, 5}},
			now:  120,
			want: []Sample{{at(60), 3}, {at(90), 4}, {at(120), 5}}},
		{name: "gaps stay gaps", n: 4,
			add:  []obs{{0, 1}, {90, 4}},
			now:  90,
			want: []Sample{{at(0), 1}, {at(90), 4}}},
		{name: "samples older than the span are left out", n: 4,
			add:  []obs{{0, 1}, {30, 2}},
			now:  150, // the span is 60..150
			want: nil},
		{name: "span edge", n: 4,
			add:  []obs{{0, 1}, {30, 2}},
			now:  120, // the span is 30..120
			want: []Sample{{at(30), 2}}},
		{name: "a clock that goes back rewrites nothing", n: 4,
			add:  []obs{{60, 7}, {10, 99}, {65, 2}},
			now:  70,
			want: []Sample{{at(60), 7}}},
		{name: "samples in the future of now are left out", n: 4,
			add:  []obs{{0, 1}, {60, 2}},
			now:  30,
			want: []Sample{{at(0), 1}}},
		{name: "a ring of one", n: 1,
			add:  []obs{{0, 1}, {30, 2}, {45, 3}},
			now:  50,
			want: []Sample{{at(30), 3}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRing(30*time.Second, tc.n)
			for _, o := range tc.add {
				r.Add(at(o.at), o.lag)
			}
			got := r.Samples(at(tc.now))
			if !slices.Equal(got, tc.want) {
				t.Errorf("samples at +%ds:\n got %v\nwant %v", tc.now, got, tc.want)
			}
			if len(r.buf) > tc.n {
				t.Errorf("ring holds %d samples, more than its %d steps", len(r.buf), tc.n)
			}
		})
	}
}

// TestRingBounded adds a week of samples every 10 s to a 6 h ring.
func TestRingBounded(t *testing.T) {
	r := NewRing(30*time.Second, 720)
	t0 := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	var now time.Time
	for i := range 7 * 24 * 360 {
		now = t0.Add(time.Duration(i) * 10 * time.Second)
		r.Add(now, time.Duration(i))
	}
	got := r.Samples(now)
	if len(got) != 720 || cap(r.buf) != 720 {
		t.Fatalf("%d samples in a ring of capacity %d, want 720 in 720", len(got), cap(r.buf))
	}
	if want := now.Truncate(30 * time.Second); !got[719].At.Equal(want) {
		t.Errorf("newest sample at %v, want %v", got[719].At, want)
	}
	for i := 1; i < len(got); i++ {
		if got[i].At.Sub(got[i-1].At) != 30*time.Second {
			t.Fatalf("samples %d and %d are %v apart", i-1, i, got[i].At.Sub(got[i-1].At))
		}
	}
}
