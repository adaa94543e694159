package epochctl

import (
	"fmt"
	"math"
	"time"
)

// fmtRate writes a rate in bytes/s with decimal units.
func fmtRate(r float64) string {
	switch {
	case !(r >= 0) || math.IsInf(r, 0):
		return "?"
	case r >= 1e9:
		return fmt.Sprintf("%.2f GB/s", r/1e9)
	case r >= 1e6:
		return fmt.Sprintf("%.1f MB/s", r/1e6)
	case r >= 1e3:
		return fmt.Sprintf("%.0f kB/s", r/1e3)
	}
	return fmt.Sprintf("%.0f B/s", r)
}

// fmtSec writes seconds as a duration rounded for reading.
func fmtSec(s float64) string {
	d := toLag(s)
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func pct(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) }

// reason is the decision's one line.
//
// chosen is the plan decided, at the interval the hysteresis left;
// scanned the plan the scan found at that level, which the other levels'
// plans compare with.
func (c *Controller) reason(m *model, chosen, scanned plan, lag, gap, goal float64, plans []plan) string {
	cfg := &c.cfg
	target := fmtSec(seconds(cfg.RPOTarget))
	p := chosen.p
	T, l := fmtSec(p.T), chosen.level
	good := "unmeasured"
	if m.goodput > 0 {
		good = fmtRate(m.goodput)
		if m.capped {
			good += " (the cap)"
		}
	}
	var s string
	switch chosen.kind {
	case PlanStart:
		s = fmt.Sprintf("start: no epoch with a known interval yet; %s epochs at %s", T, l)
	case PlanHeadroom:
		s = fmt.Sprintf("headroom: %s epochs at %s keep the sender %s busy; predicted lag %s (target %s)",
			T, l, pct(p.Busy), fmtSec(p.Lag), target)
	case PlanLinkBound:
		s = fmt.Sprintf("link-bound: %s epochs at %s keep the sender %s busy, %s on the wire per guest second at goodput %s; predicted lag %s (target %s)",
			T, l, pct(p.Busy), fmtRate(p.Wire/p.T), good, fmtSec(p.Lag), target)
	case PlanCPUBound:
		s = fmt.Sprintf("cpu-bound: %s epochs keep %s compression at %.2f CPU-s per guest second; predicted lag %s (target %s)",
			T, l, p.CPU/p.T, fmtSec(p.Lag), target)
	case PlanTight:
		s = fmt.Sprintf("tight: %s epochs at %s keep the sender %s busy (over %s) to hold the lag at %s (target %s)",
			T, l, pct(p.Busy), pct(cfg.TargetBusy), fmtSec(p.Lag), target)
	case PlanLagBreach:
		s = fmt.Sprintf("breach: the best plan, %s epochs at %s, predicts lag %s > %s (target %s less %s margin) at goodput %s",
			T, l, fmtSec(p.Lag), fmtSec(goal), target, pct(cfg.Margin), good)
	case PlanOverloaded:
		s = fmt.Sprintf("breach: even %s epochs at %s keep the sender %s busy (over %s): predicted lag %s (target %s)",
			T, l, pct(p.Busy), pct(cfg.MaxBusy), fmtSec(p.Lag), target)
	case PlanUnstable:
		// The lag itself grows by one second per second between commits,
		// whatever the rates; what the rates say is how much more sending
		// each second of guest time brings than a second can carry: the
		// backlog, and the lag at each commit with it, grow without bound.
		if m.goodput > 0 && p.CPU < p.Wire/m.goodput {
			s = fmt.Sprintf("breach: dirty %s after dedup+compression exceeds goodput %s: the backlog grows ~%.2f s of sending per second, and the lag without bound (%s after %s epochs)",
				fmtRate(p.Wire/p.T), good, chosen.grow, fmtSec(p.Lag), T)
		} else {
			s = fmt.Sprintf("breach: compressing at %s takes %.2f CPU-s per guest second: the backlog grows ~%.2f s of sending per second, and the lag without bound (%s after %s epochs)",
				l, p.CPU/p.T, chosen.grow, fmtSec(p.Lag), T)
		}
	case PlanCPUOverload:
		s = fmt.Sprintf("breach: every allowed level needs more than %.2f CPU-s per guest second even with %s epochs",
			cfg.MaxCPUShare, T)
	}
	if !chosen.kind.Breach() && lag > goal {
		s = fmt.Sprintf("breach: the next epoch covers %s since the last cut, so its commit is predicted at lag %s > %s; then %s",
			fmtSec(gap), fmtSec(lag), fmtSec(goal), s)
	}
	if cur := c.currentLevel(); cur != l && len(plans) > 1 {
		for _, q := range plans {
			if q.level == cur {
				s += fmt.Sprintf("; level %s→%s (lag %s vs %s)", cur, l, fmtSec(scanned.p.Lag), fmtSec(q.p.Lag))
			}
		}
	}
	return s
}
