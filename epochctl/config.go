package epochctl

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Defaults that Validate fills in for zero fields.
const (
	DefaultMinInterval   = 10 * time.Second
	DefaultMargin        = 0.10
	DefaultTargetBusy    = 0.80
	DefaultMaxBusy       = 0.95
	DefaultMaxCPUShare   = 0.50
	DefaultStepFactor    = 2.0
	DefaultDeadband      = 0.10
	DefaultLevelGain     = 0.10
	DefaultAlphaDown     = 0.60
	DefaultAlphaUp       = 0.25
	DefaultSmoothing     = 0.25
	DefaultCurveHalfLife = 4 * time.Hour
)

// longestInterval bounds MaxInterval so that no sum of durations the
// controller forms can overflow.
const longestInterval = 30 * 24 * time.Hour

// Config configures a Controller. RPOTarget is required; every other zero
// field takes its default.
type Config struct {
	// RPOTarget is the lag the replica must stay below: at any instant
	// now − (cut time of the last committed epoch) < RPOTarget.
	RPOTarget time.Duration

	// MinInterval and MaxInterval bound the epoch length, the time between
	// two cuts. MinInterval defaults to DefaultMinInterval (or RPOTarget/4
	// when that is shorter), MaxInterval to RPOTarget. A MaxInterval above
	// RPOTarget lets the controller lengthen epochs past the target when the
	// link cannot keep up, to coalesce more overwrites and bound the growth.
	MinInterval, MaxInterval time.Duration

	// BandwidthCap is the rate in bytes/s the sender may use; 0 means
	// unlimited. The controller never plans with a goodput above it.
	BandwidthCap float64

	// Levels are the compression levels the controller may choose, by
	// default all of them. StartLevel is used until an observation says
	// which level is in use; it must be one of Levels. Its zero value is
	// LevelNone: set it from the configured compression.
	Levels     []Level
	StartLevel Level

	// Margin is the safety margin on the target: plans aim at a peak lag of
	// at most (1−Margin)·RPOTarget and the decision reports a breach when no
	// plan gets there. Default 0.10.
	Margin float64

	// TargetBusy is the fraction of the time the one-epoch-at-a-time
	// pipeline may be busy (cut to commit over the interval) in a normal
	// plan; MaxBusy the fraction accepted when that is the only way to meet
	// the target. Defaults 0.80 and 0.95.
	TargetBusy, MaxBusy float64

	// MaxCPUShare bounds compression CPU: CPU seconds per second of guest
	// time, so 0.5 is half a core on average. Default 0.50.
	MaxCPUShare float64

	// StepFactor bounds the change of the interval per decision: the next
	// interval lies within [last/StepFactor, last·StepFactor] unless only a
	// larger step meets the target. Default 2.
	StepFactor float64

	// Deadband: a new interval within this fraction of the last one is not
	// worth a change. Default 0.10.
	Deadband float64

	// LevelGain is what a costlier compression level must buy: it is
	// adopted when the current level's predicted lag exceeds the best by
	// more than 2·LevelGain, and a cheaper level replaces the current one
	// when it comes within LevelGain of the best. Default 0.10.
	LevelGain float64

	// AlphaDown and AlphaUp are the smoothing factors of the goodput
	// estimate (in log space) for samples below and above it: bad news is
	// believed faster than good news. Defaults 0.60 and 0.25.
	AlphaDown, AlphaUp float64

	// Smoothing is the EWMA factor of the dedup ratio, the compression
	// ratios and the compression speeds. Default 0.25.
	Smoothing float64

	// CurveHalfLife is how fast what was learnt about the changed bytes at
	// an interval fades when the sender no longer runs epochs of about that
	// length, in guest time. Default 4h.
	CurveHalfLife time.Duration
}

// Validate fills the defaults of zero fields and reports what is wrong.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("epochctl: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.RPOTarget <= 0 {
		bad("RPOTarget", "must be positive, got %s: it is the age the replica's newest cut may reach", c.RPOTarget)
	}
	if c.MinInterval == 0 {
		c.MinInterval = DefaultMinInterval
		if c.RPOTarget > 0 {
			c.MinInterval = min(c.MinInterval, c.RPOTarget/4)
		}
	}
	if c.MaxInterval == 0 {
		c.MaxInterval = max(c.RPOTarget, c.MinInterval)
	}
	switch {
	case c.MinInterval <= 0:
		bad("MinInterval", "must be positive, got %s", c.MinInterval)
	case c.RPOTarget > 0 && c.MinInterval >= c.RPOTarget:
		bad("MinInterval", "%s leaves no room under the RPO target %s: the lag peaks at an interval plus the time to send it", c.MinInterval, c.RPOTarget)
	}
	switch {
	case c.MaxInterval < c.MinInterval:
		bad("MaxInterval", "%s is below MinInterval %s", c.MaxInterval, c.MinInterval)
	case c.MaxInterval > longestInterval:
		bad("MaxInterval", "%s is above %s", c.MaxInterval, longestInterval)
	}
	if math.IsNaN(c.BandwidthCap) || math.IsInf(c.BandwidthCap, 0) || c.BandwidthCap < 0 {
		bad("BandwidthCap", "must be a finite rate ≥ 0 in bytes/s (0 = unlimited), got %v", c.BandwidthCap)
	}
	if len(c.Levels) == 0 {
		c.Levels = AllLevels()
	}
	for _, l := range c.Levels {
		if !l.Valid() {
			bad("Levels", "unknown level %d", uint8(l))
		}
	}
	if !c.allowed(c.StartLevel) {
		bad("StartLevel", "%s is not one of Levels %v", c.StartLevel, c.Levels)
	}
	fraction := func(field string, p *float64, def, lo, hi float64) {
		if *p == 0 {
			*p = def
		}
		if !(*p >= lo && *p <= hi) { // also catches NaN
			bad(field, "must be in [%g, %g], got %v", lo, hi, *p)
		}
	}
	fraction("Margin", &c.Margin, DefaultMargin, 0, 0.9)
	fraction("TargetBusy", &c.TargetBusy, DefaultTargetBusy, 0.05, 1)
	fraction("MaxBusy", &c.MaxBusy, DefaultMaxBusy, 0.05, 1)
	if c.MaxBusy < c.TargetBusy {
		bad("MaxBusy", "%v is below TargetBusy %v", c.MaxBusy, c.TargetBusy)
	}
	fraction("MaxCPUShare", &c.MaxCPUShare, DefaultMaxCPUShare, 0.01, 64)
	fraction("StepFactor", &c.StepFactor, DefaultStepFactor, 1.01, 100)
	fraction("Deadband", &c.Deadband, DefaultDeadband, 0, 0.5)
	fraction("LevelGain", &c.LevelGain, DefaultLevelGain, 0, 1)
	fraction("AlphaDown", &c.AlphaDown, DefaultAlphaDown, 0.01, 1)
	fraction("AlphaUp", &c.AlphaUp, DefaultAlphaUp, 0.01, 1)
	fraction("Smoothing", &c.Smoothing, DefaultSmoothing, 0.01, 1)
	if c.CurveHalfLife == 0 {
		c.CurveHalfLife = DefaultCurveHalfLife
	}
	if c.CurveHalfLife < time.Second || c.CurveHalfLife > longestInterval {
		bad("CurveHalfLife", "must be in [1s, %s], got %s", longestInterval, c.CurveHalfLife)
	}
	return errors.Join(errs...)
}

func (c *Config) allowed(l Level) bool {
	for _, a := range c.Levels {
		if a == l {
			return true
		}
	}
	return false
}
