package epochctl

import "time"

// Group plans the epochs of a consistency group: its members are cut
// together and send over one shared link, so one Controller plans for the
// group as if it were one VM. Each committed group epoch is summed into one
// Observation (see Combine) and the decision says when the group cuts next.
// It is not safe for concurrent use.
type Group struct {
	ctl *Controller
}

// NewGroup returns a Group planning under c; c.RPOTarget is the group's rpo.
func NewGroup(c Config) (*Group, error) {
	ctl, err := New(c)
	if err != nil {
		return nil, err
	}
	return &Group{ctl: ctl}, nil
}

// Observe records one committed group epoch from its members' epochs.
func (g *Group) Observe(members []Observation) { g.ctl.Observe(Combine(members)) }

// Decide plans the group's next cut; see Controller.Decide.
func (g *Group) Decide(now time.Time) Decision { return g.ctl.Decide(now) }

// Controller is the controller underneath, for predictions and status.
func (g *Group) Controller() *Controller { return g.ctl }

// Combine sums the members' observations of one group epoch into the
// observation of the group as one VM:
//   - sizes and CPU add up: every member's bytes cross the shared link;
//   - the cut is the earliest member's and the commit the latest: the
//     group's recovery point is as old as its oldest member's, and it is
//     only whole once every member has committed;
//   - the send time is the longest: members send at the same time, so the
//     shared goodput is the summed wire bytes over the longest send;
//   - the interval is the longest member's (they are cut together, so they
//     agree unless one missed a cut);
//   - the level is the members' if they agree, else unknown (the
//     controller then keeps the one in use).
//
// No members gives the zero Observation.
func Combine(members []Observation) Observation {
	var g Observation
	for i, m := range members {
		g.ChangedBytes += max(m.ChangedBytes, 0)
		g.DedupedBytes += min(max(m.DedupedBytes, 0), max(m.ChangedBytes, 0))
		g.WireBytes += max(m.WireBytes, 0)
		g.CPUTime += max(m.CPUTime, 0)
		g.SendTime = max(g.SendTime, m.SendTime)
		g.Interval = max(g.Interval, m.Interval)
		if !m.Cut.IsZero() && (g.Cut.IsZero() || m.Cut.Before(g.Cut)) {
			g.Cut = m.Cut
		}
		if m.Committed.After(g.Committed) {
			g.Committed = m.Committed
		}
		switch {
		case i == 0:
			g.Level = m.Level
		case m.Level != g.Level:
			g.Level = Level(NumLevels) // not a level: mixed
		}
	}
	return g
}
