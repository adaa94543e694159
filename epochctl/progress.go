package epochctl

import (
	"fmt"
	"math"
	"time"
)

// Progress is what the sender knows, at At, of the epoch it is sending: the
// epoch cut at Cut, after the last one observed. The caller reports it as
// the transfer goes (every second or so) so that predictions follow the
// live goodput between commits rather than the one the last commit showed.
type Progress struct {
	At    time.Time // when this was measured, on the caller's clock
	Cut   time.Time // the cut of the epoch in flight
	Level Level     // its compression level

	// Of the epoch's changed bytes (before dedup and compression, as in
	// Observation.ChangedBytes): those sent so far and those left.
	ChangedSent, ChangedLeft int64
	WireSent                 int64         // bytes that went on the wire so far
	SendTime                 time.Duration // since the epoch's first byte left
}

// Progress samples kept for the live goodput: the rate is measured over
// the latest liveWindow of the transfer, or all of it when shorter.
const (
	liveWindow  = 5.0 // seconds
	liveSamples = 64
)

// flight is the epoch being sent, from its progress reports.
type flight struct {
	cut   time.Time
	level Level
	last  Progress
	// (time, wire bytes) samples, oldest first; the first is the start of
	// the transfer.
	at   []time.Time
	wire []int64
}

// ObserveProgress records the progress of the epoch in flight. Reports of
// an epoch already observed (its cut not after the last observed cut) or
// going back in time are ignored; a report of a new cut starts afresh.
func (c *Controller) ObserveProgress(p Progress) {
	if p.Cut.IsZero() || p.At.IsZero() || !c.lastCut.IsZero() && !p.Cut.After(c.lastCut) {
		return
	}
	f := c.flight
	start := p.At.Add(-max(p.SendTime, 0))
	if f == nil || !f.cut.Equal(p.Cut) || p.WireSent < f.last.WireSent || start.After(f.at[0].Add(time.Second)) {
		// A new epoch, or a new attempt at it: the transfer restarted.
		f = &flight{cut: p.Cut, at: []time.Time{start}, wire: []int64{0}}
		c.flight = f
	}
	if !p.At.After(f.at[len(f.at)-1]) {
		return // nothing new, or out of order
	}
	f.level = p.Level
	if !p.Level.Valid() {
		f.level = c.currentLevel()
	}
	f.last = p
	f.at = append(f.at, p.At)
	f.wire = append(f.wire, max(p.WireSent, 0))
	// Forget samples older than the window, keeping one at or beyond it.
	drop := 0
	for drop+1 < len(f.at)-1 && seconds(p.At.Sub(f.at[drop+1])) >= liveWindow {
		drop++
	}
	if n := len(f.at) - liveSamples; n > drop {
		drop = n
	}
	f.at, f.wire = f.at[drop:], f.wire[drop:]
}

// liveGoodput is the goodput of the transfer in flight over its latest
// window, at now, and whether it says anything: a window too short or too
// small measures latency and buffers, not the link, unless it is the full
// window (a link that carries next to nothing for liveWindow seconds is
// slow). Reports come as the sender finishes items of a few MiB; when
// none came for liveWindow, the window stretches to now with no more
// bytes than reported: the link carries no more than that.
func (f *flight) liveGoodput(now time.Time) (float64, bool) {
	n := len(f.at) - 1
	end := f.at[n]
	if stale := now.Sub(end); seconds(stale) > liveWindow {
		end = now
	}
	span := seconds(end.Sub(f.at[0]))
	bytes := float64(f.wire[n] - f.wire[0])
	if span < minGoodSend || bytes < minGoodBytes && span < liveWindow {
		return 0, false
	}
	return bytes / span, true
}

// inFlight is what the progress of the epoch in flight predicts at now.
type inFlight struct {
	cut      time.Time
	interval float64 // seconds since the previous cut; 0 if unknown
	lag      float64 // the lag now: seconds since the previous cut; 0 if unknown
	level    Level
	live     float64 // live goodput, bytes/s; 0 if not measured
	left     float64 // wire bytes left
	rate     float64 // goodput the rest is sent at
	commit   float64 // seconds from now to its commit (+Inf: stalled)
}

// inFlight predicts the end of the epoch in flight with the model m, or
// returns nil when none is in flight.
func (c *Controller) inFlight(m *model, now time.Time) *inFlight {
	f := c.flight
	if f == nil {
		return nil
	}
	p := f.last
	in := &inFlight{cut: f.cut, level: f.level}
	if !c.lastCut.IsZero() {
		in.interval = seconds(f.cut.Sub(c.lastCut))
		in.lag = seconds(now.Sub(c.lastCut))
	}
	// The rest goes on the wire at the wire/changed ratio of what went so
	// far, or the model's until enough went to tell.
	ratio := m.ratio[f.level] * (1 - m.dedup)
	if p.ChangedSent >= minRatioBytes && p.WireSent > 0 {
		ratio = float64(p.WireSent) / float64(p.ChangedSent)
	}
	in.left = float64(max(p.ChangedLeft, 0)) * ratio
	in.rate = m.goodput
	if g, ok := f.liveGoodput(now); ok {
		in.live, in.rate = g, g
	}
	switch {
	case in.left == 0:
		in.commit = 0
	case in.rate > 0:
		in.commit = in.left / in.rate
	default:
		in.commit = math.Inf(1)
	}
	// The report is as old as it is: the bytes sent since are not known,
	// but the time passed is.
	in.commit = max(in.commit-max(seconds(now.Sub(p.At)), 0), 0)
	return in
}

// reason is the prefix the epoch in flight adds to the decision's reason.
// peak is its predicted lag at commit, goal the target less the margin.
func (in *inFlight) reason(peak, goal float64) string {
	how := "at goodput " + fmtRate(in.rate)
	if in.live > 0 {
		how = "at the live goodput " + fmtRate(in.live)
	} else if in.rate == 0 && in.left > 0 {
		how = "with nothing getting through"
	}
	s := fmt.Sprintf("in flight: %.1f MB left %s, commit in %s", in.left/1e6, how, fmtSec(in.commit))
	switch {
	case in.interval == 0:
	case math.IsInf(peak, 1):
		s = fmt.Sprintf("breach: the epoch in flight has %.1f MB left %s: the lag grows until it moves again (%s now)", in.left/1e6, how, fmtSec(in.lag))
	case peak > goal:
		s = fmt.Sprintf("breach: the epoch in flight has %.1f MB left %s: it commits at lag %s > %s", in.left/1e6, how, fmtSec(peak), fmtSec(goal))
	default:
		s += fmt.Sprintf(" at lag %s", fmtSec(peak))
	}
	return s
}
