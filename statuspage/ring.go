package statuspage

import "time"

// Sample is the largest lag seen in one step of time.
type Sample struct {
	At  time.Time // start of the step
	Lag time.Duration
}

// Ring holds one sample per step over a bounded span: at most n steps,
// the oldest overwritten first. Observations within one step keep the
// largest lag, so a sampled sawtooth keeps its peaks (the lag an operator
// cares about is the worst). The zero Ring is not usable; see NewRing.
type Ring struct {
	step time.Duration
	buf  []Sample
	head int // index of the oldest sample once full
	full bool
}

// NewRing returns a ring of n steps of step each.
func NewRing(step time.Duration, n int) *Ring {
	return &Ring{step: step, buf: make([]Sample, 0, max(n, 1))}
}

// Add records lag observed at t. An observation older than the newest
// step (a clock that went back) is dropped: the past is not rewritten.
func (r *Ring) Add(t time.Time, lag time.Duration) {
	at := t.Truncate(r.step)
	if n := r.len(); n > 0 {
		last := r.at(n - 1)
		switch {
		case at.Equal(last.At):
			last.Lag = max(last.Lag, lag)
			return
		case at.Before(last.At):
			return
		}
	}
	s := Sample{At: at, Lag: lag}
	if !r.full {
		r.buf = append(r.buf, s)
		r.full = len(r.buf) == cap(r.buf)
		return
	}
	r.buf[r.head] = s
	r.head = (r.head + 1) % len(r.buf)
}

func (r *Ring) len() int { return len(r.buf) }

// at returns the i-th sample, oldest first.
func (r *Ring) at(i int) *Sample { return &r.buf[(r.head+i)%len(r.buf)] }

// Samples returns the samples of the span ending at now, oldest first.
// Steps without an observation are absent, so gaps stay visible.
func (r *Ring) Samples(now time.Time) []Sample {
	from := now.Truncate(r.step).Add(-time.Duration(cap(r.buf)-1) * r.step)
	var out []Sample
	for i := range r.len() {
		if s := *r.at(i); !s.At.Before(from) && !s.At.After(now) {
			out = append(out, s)
		}
	}
	return out
}
