package agent

import (
	"time"

	"github.com/drsync/drsync/epochctl"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/wire"
)

// pacer decides when a VM's next epoch starts and at which compression
// level, from the epochs committed so far, and describes the flow for
// status and metrics. It does no IO and reads no clock: the loop hands it
// results and instants.
type pacer struct {
	pc      Pacing
	ctl     *epochctl.Controller // nil: a fixed min_interval or a schedule
	prevCut time.Time            // the cut of the previous committed epoch
	first   time.Time            // start of the schedule grid
	breach  bool                 // the last decision predicted a breach
}

// newPacer returns the VM's pacer; share is its part of the bandwidth cap
// in bytes/s (0: no cap), prevCut the last committed cut known.
func newPacer(pc Pacing, share float64, prevCut time.Time) (*pacer, error) {
	p := &pacer{pc: pc, prevCut: prevCut}
	if pc.Adaptive() {
		cfg, err := pc.Controller(share)
		if err != nil {
			return nil, err
		}
		if p.ctl, err = epochctl.New(cfg); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// pace is the pacer's answer after a committed epoch.
type pace struct {
	next  time.Time        // start the next epoch then (or at once if past)
	level wire.Compression // for the next epoch
	flow  FlowStatus
	// breachBegan and breachEnded report a change of the prediction.
	breachBegan, breachEnded bool
	reason                   string // the controller's one-line plan
}

// FlowStatus is the replication flow of a VM, for status and metrics.
type FlowStatus struct {
	// EpochSeconds is the guest time the last epoch covered (its cut less
	// the previous cut); 0 when unknown.
	EpochSeconds float64 `json:"epoch_seconds,omitempty"`
	// GoodputBytesPerSecond is the last epoch's wire bytes over its send
	// time; DirtyBytesPerSecond its changed bytes over EpochSeconds.
	GoodputBytesPerSecond float64 `json:"goodput_bytes_per_second,omitempty"`
	DirtyBytesPerSecond   float64 `json:"dirty_bytes_per_second,omitempty"`
	Compression           string  `json:"compression"`
	// With adaptive epochs: the target, the next epoch's length, the lag
	// predicted just before it commits (or the epoch in flight, if later),
	// and whether the target will be missed at the measured rates. While an
	// epoch is sent they follow its live goodput.
	RPOTargetSeconds    float64 `json:"rpo_target_seconds,omitempty"`
	NextEpochSeconds    float64 `json:"next_epoch_seconds,omitempty"`
	PredictedLagSeconds float64 `json:"predicted_lag_seconds,omitempty"`
	BreachPredicted     bool    `json:"rpo_breach_predicted"`
	PlannedGoodputBps   float64 `json:"planned_goodput_bytes_per_second,omitempty"`
	// LiveGoodputBps is the goodput of the epoch being sent over its
	// latest seconds, while one is (0 between epochs).
	LiveGoodputBps        float64 `json:"live_goodput_bytes_per_second,omitempty"`
	ModelDirtyBytesPerSec float64 `json:"model_dirty_bytes_per_second,omitempty"`
	Plan                  string  `json:"plan,omitempty"`
}

// committed takes a committed epoch that started at start and was
// acknowledged at now, and plans the next one.
func (p *pacer) committed(res *sender.Result, start, now time.Time) pace {
	if p.first.IsZero() {
		p.first = start
	}
	var interval time.Duration
	if !p.prevCut.IsZero() && res.Cut.After(p.prevCut) {
		interval = res.Cut.Sub(p.prevCut)
	}
	p.prevCut = res.Cut
	changed := res.DataBytes + res.RefBytes
	out := pace{level: res.Compression, flow: FlowStatus{EpochSeconds: interval.Seconds(), Compression: res.Compression.String()}}
	if res.SendTime > 0 {
		out.flow.GoodputBytesPerSecond = float64(res.WireBytes) / res.SendTime.Seconds()
	}
	if interval > 0 {
		out.flow.DirtyBytesPerSecond = float64(changed) / interval.Seconds()
	}
	if p.ctl == nil {
		out.next = p.fixedNext(start)
		return out
	}
	p.ctl.Observe(epochctl.Observation{
		Cut: res.Cut, Committed: now, Interval: interval,
		ChangedBytes: int64(changed), DedupedBytes: int64(res.RefBytes), WireBytes: int64(res.WireBytes),
		SendTime: res.SendTime, CPUTime: res.CompressTime, Level: epochctl.Level(res.Compression),
	})
	p.decided(p.ctl.Decide(now), &out)
	return out
}

// inFlight takes the progress of the epoch being sent, as the sender
// reported it at at, and plans again at now from the live transfer, so
// that a link that slows in the middle of an epoch shows in the
// prediction (and raises the breach) before the commit. Only the planning
// fields of out.flow are set; ok is false without adaptive epochs.
func (p *pacer) inFlight(pr sender.Progress, at, now time.Time) (out pace, ok bool) {
	if p.ctl == nil || pr.Cut.IsZero() || pr.Planning {
		// While the epoch is being planned, what is left is not known.
		return pace{}, false
	}
	p.ctl.ObserveProgress(epochctl.Progress{
		At: at, Cut: pr.Cut, Level: epochctl.Level(pr.Compression),
		ChangedSent: int64(pr.SentBytes), ChangedLeft: int64(pr.LeftBytes), WireSent: int64(pr.WireBytes), SendTime: pr.SendTime,
	})
	p.decided(p.ctl.Decide(now), &out)
	return out, true
}

// decided puts the controller's decision d into out.
func (p *pacer) decided(d epochctl.Decision, out *pace) {
	out.next, out.level, out.reason = d.NextCut, wire.Compression(d.Level), d.Reason
	f := &out.flow
	f.RPOTargetSeconds = p.pc.RPOTarget.Seconds()
	f.NextEpochSeconds = d.Interval.Seconds()
	f.PredictedLagSeconds = min(d.PredictedLag, maxPredictedLag).Seconds()
	f.BreachPredicted = d.Breach
	f.PlannedGoodputBps = d.Estimates.Goodput
	f.LiveGoodputBps = d.Estimates.LiveGoodput
	f.ModelDirtyBytesPerSec = d.Estimates.DirtyRate
	f.Plan = d.Reason
	out.breachBegan, out.breachEnded = d.Breach && !p.breach, !d.Breach && p.breach
	p.breach = d.Breach
}

// maxPredictedLag bounds the lag shown: a stalled transfer predicts no
// commit at all, which JSON and people read better as a year.
const maxPredictedLag = 365 * 24 * time.Hour

// planned sets the planning fields of f from g, which inFlight filled,
// keeping what f says of the last committed epoch.
func (f *FlowStatus) planned(g FlowStatus) {
	f.RPOTargetSeconds, f.NextEpochSeconds, f.PredictedLagSeconds = g.RPOTargetSeconds, g.NextEpochSeconds, g.PredictedLagSeconds
	f.BreachPredicted, f.PlannedGoodputBps, f.LiveGoodputBps = g.BreachPredicted, g.PlannedGoodputBps, g.LiveGoodputBps
	f.ModelDirtyBytesPerSec, f.Plan = g.ModelDirtyBytesPerSec, g.Plan
}

// fixedNext is when the epoch after the one started at start begins
// without adaptive epochs. Continuous: min_interval after start.
// Scheduled: the next slot of the schedule grid that began with the first
// epoch. A slot missed because an epoch took longer than the interval is
// not queued: the next epoch starts at once.
func (p *pacer) fixedNext(start time.Time) time.Time {
	iv := p.pc.interval()
	if p.pc.Mode != Scheduled {
		return start.Add(iv)
	}
	n := start.Sub(p.first)/iv + 1
	return p.first.Add(n * iv)
}
