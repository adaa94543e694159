package stripe

import (
	"errors"
	"fmt"
	"time"
)

// Grower defaults.
const (
	DefaultGrowWindow  = 500 * time.Millisecond
	DefaultGrowRTTs    = 8
	DefaultGrowGain    = 0.15
	DefaultGrowBusy    = 0.2
	DefaultGrowReprobe = 2 * time.Minute
	DefaultGrowDrop    = 0.5
)

// GrowConfig tunes a Grower. Zero values take the defaults.
type GrowConfig struct {
	// Max is the most connections that may carry data: those dialled.
	Max int
	// Start is how many carry data at first (default 1): a level an
	// earlier stream over the same path settled on.
	Start int
	// Window is the shortest measuring window; a window also lasts at
	// least RTTs round trips, when the round trip is known.
	Window time.Duration
	RTTs   int
	// Gain is the least rise in goodput, relative, that makes more
	// connections worth having.
	Gain float64
	// Busy is the share of a window the writer must have had data waiting
	// for a connection for the window to count: in a window the sender
	// could not fill, the connections are not what limits goodput. A
	// writer that waits a fifth of the time produces 1.25 times what the
	// connections carry, more than a Gain more connections could add.
	Busy float64
	// Reprobe, once settled this long, tries more connections again
	// (negative: never); Drop, a settled goodput falling by this share
	// (negative: never) for two windows in a row, does so at once.
	Reprobe time.Duration
	Drop    float64
}

// Validate fills the defaults and reports what is wrong.
func (c *GrowConfig) Validate() error {
	if c.Start == 0 {
		c.Start = 1
	}
	if c.Window == 0 {
		c.Window = DefaultGrowWindow
	}
	if c.RTTs == 0 {
		c.RTTs = DefaultGrowRTTs
	}
	if c.Gain == 0 {
		c.Gain = DefaultGrowGain
	}
	if c.Busy == 0 {
		c.Busy = DefaultGrowBusy
	}
	if c.Reprobe == 0 {
		c.Reprobe = DefaultGrowReprobe
	}
	if c.Drop == 0 {
		c.Drop = DefaultGrowDrop
	}
	switch {
	case c.Max < 1 || c.Max > MaxCount:
		return fmt.Errorf("stripe: grow to %d connections, want 1 to %d", c.Max, MaxCount)
	case c.Start < 1:
		return fmt.Errorf("stripe: start on %d connections, want at least 1", c.Start)
	case c.Window < 0 || c.RTTs < 0 || c.Gain < 0 || c.Busy < 0 || c.Busy > 1 || c.Drop >= 1:
		return errors.New("stripe: grow window, gain or busy share out of range")
	}
	c.Start = min(c.Start, c.Max)
	return nil
}

// Sample is what a stream's writer has measured so far; the counters are
// cumulative, so a sample lost or skipped loses nothing.
type Sample struct {
	At time.Time
	// Bytes is the data handed to the connections.
	Bytes int64
	// Waiting is the time data waited for a connection to take it.
	Waiting time.Duration
	// RTT is the path's round trip, 0 if unknown.
	RTT time.Duration
}

// Step is what a Grower made of a sample.
type Step struct {
	Active  int  // connections to carry data from now on
	Changed bool // Active differs from before the sample
	// Known is the most connections measured worth having (at first,
	// Start): where the next stream over the same path should start,
	// rather than at a level being probed.
	Known int
	// Window is set when the sample closed a measuring window; the rest
	// describe that window.
	Window  bool
	Length  time.Duration
	Goodput float64 // bytes/s
	Busy    float64 // share of the window data waited for a connection
	Reason  string
}

type growState uint8

const (
	measure growState = iota // the level's goodput, the baseline of a probe
	probe                    // a higher level, against the baseline
	verify                   // back from a probe: the baseline again
	settled
)

// Grower decides how many of a stream's connections carry data: it starts
// with Start and doubles them while each doubling raises goodput by Gain,
// going back to the last level that did when one does not (and measuring
// that level again, in case its first measure was a lucky window that the
// level probed beats after all). Each level is measured over a window in
// which the writer had data waiting (in which the connections, not the
// sender, set the pace); the first window, and the first after a change,
// are skipped, while connections leave slow start. Settled, it probes
// again after Reprobe, or when goodput falls by Drop. It does no IO and
// reads no clock: the stream feeds it samples.
type Grower struct {
	c      GrowConfig
	active int
	state  growState
	warm   bool   // skip the next window
	last   Sample // the start of the current window
	begun  bool

	base      float64 // goodput of baseLevel, the level a probe is held against
	baseLevel int
	since     time.Time // settled then
	low       int       // settled windows in a row Drop below base
	probed    float64   // goodput of probedLevel, a probe found not worth it
	probedLvl int
}

// NewGrower returns a Grower for c.
func NewGrower(c GrowConfig) (*Grower, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	// The first window is a warm-up too: the connections start in slow
	// start, and take a first burst into their buffers faster than the
	// path carries it.
	return &Grower{c: c, active: c.Start, baseLevel: c.Start, warm: true}, nil
}

// Active is the number of connections to carry data.
func (g *Grower) Active() int { return g.active }

// Observe takes a sample and says how many connections carry data.
func (g *Grower) Observe(s Sample) Step {
	st := Step{Active: g.active, Known: g.baseLevel}
	if !g.begun {
		g.begun, g.last = true, s
		return st
	}
	length := s.At.Sub(g.last.At)
	if length < max(g.c.Window, time.Duration(g.c.RTTs)*s.RTT) {
		return st
	}
	st.Window, st.Length = true, length
	st.Goodput = float64(s.Bytes-g.last.Bytes) / length.Seconds()
	st.Busy = float64(s.Waiting-g.last.Waiting) / float64(length)
	g.last = s
	from := g.active
	switch {
	case g.warm:
		g.warm = false
		st.Reason = "warm-up"
		return st
	case st.Busy < g.c.Busy:
		st.Reason = "sender-limited"
		return st
	}
	switch g.state {
	case measure:
		g.grow(st.Goodput)
		st.Reason = fmt.Sprintf("baseline at %d", from)
	case probe:
		if st.Goodput >= g.base*(1+g.c.Gain) {
			st.Reason = fmt.Sprintf("%d gain %+.0f%% over %d", from, 100*(st.Goodput/g.base-1), g.baseLevel)
			g.grow(st.Goodput)
			break
		}
		st.Reason = fmt.Sprintf("%d gain %+.0f%% over %d: not worth it", from, 100*(st.Goodput/g.base-1), g.baseLevel)
		g.probed, g.probedLvl = st.Goodput, from
		g.settle(g.baseLevel, g.base, s.At)
		g.state = verify
	case verify:
		// The baseline may have been a lucky window (a connection's first
		// second, before its first loss, is faster than the rest): measured
		// again, the level probed may beat it after all.
		if g.probed >= st.Goodput*(1+g.c.Gain) {
			st.Reason = fmt.Sprintf("%d measured again, %d gains %+.0f%% over it after all", from, g.probedLvl, 100*(g.probed/st.Goodput-1))
			g.active, g.state, g.warm = g.probedLvl, measure, true
			break
		}
		st.Reason = "settled"
		g.settle(g.active, st.Goodput, s.At)
	case settled:
		if g.c.Drop > 0 && st.Goodput < g.base*(1-g.c.Drop) {
			g.low++
		} else {
			g.low = 0
		}
		switch {
		case g.active < g.c.Max && g.low >= 2:
			// Two windows: one slow window is as likely a hiccup of the
			// sender's host as a change of the path.
			st.Reason = fmt.Sprintf("goodput fell %.0f%%", 100*(1-st.Goodput/g.base))
			g.grow(st.Goodput)
		case g.active < g.c.Max && g.c.Reprobe > 0 && s.At.Sub(g.since) >= g.c.Reprobe:
			st.Reason = fmt.Sprintf("settled for %s", s.At.Sub(g.since).Round(time.Second))
			g.grow(st.Goodput)
		case g.low > 0:
			st.Reason = "settled, goodput low"
		default:
			st.Reason = "settled"
			// Follow the path's goodput slowly, so that a drop is measured
			// against the recent past rather than the best window ever.
			g.base = 0.8*g.base + 0.2*st.Goodput
		}
	}
	if g.active != from {
		st.Reason += fmt.Sprintf(": %d→%d", from, g.active)
	}
	st.Active, st.Changed, st.Known = g.active, g.active != from, g.baseLevel
	return st
}

// grow holds goodput as the current level's and probes the next one up;
// at Max it settles there.
func (g *Grower) grow(goodput float64) {
	g.base, g.baseLevel = goodput, g.active
	if g.active >= g.c.Max {
		g.settle(g.active, goodput, g.last.At)
		return
	}
	g.active = min(2*g.active, g.c.Max)
	g.state, g.warm = probe, true
}

func (g *Grower) settle(level int, goodput float64, at time.Time) {
	g.warm = g.active != level
	g.active, g.base, g.baseLevel = level, goodput, level
	g.state, g.since, g.low = settled, at, 0
}
