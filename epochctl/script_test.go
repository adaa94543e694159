package epochctl

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/internal/datadriven"
)

// Data-driven tests of the controller: each file in testdata/ is a script
// of commands, each followed by "----" and its expected output up to a
// blank line. Lines starting with # are comments. Times are durations
// after a fixed instant. Run with -rewrite to regenerate the expected
// output (then read the diff).
//
//	config rpo=60s min=5s max=2m cap=10MB start=fast levels=none,fast margin=0.1 targetbusy=0.8 maxbusy=0.95 cpushare=0.5
//	observe cut=10s commit=17s interval=10s changed=100MB dedup=5MB wire=50MB send=6s cpu=0.5s level=fast [repeat=N]
//	        (level=#N gives a raw level number)
//	progress at=20s cut=17s sent=40MB left=60MB wire=20MB send=2s level=fast
//	decide now=17s [verbose]
//	member cut=10s commit=17s interval=10s changed=100MB ... (as observe)
//	group [repeat=N]
//
// member holds one member's epoch of a consistency group; group combines
// the members held so far into one observation (Combine), prints it and
// observes it, N times with every member one interval later.
// observe with repeat=N observes N epochs, each one interval after the
// one before. decide prints the decision; verbose adds the estimates and
// the plan of every level.

func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata/*.txt", func(t *testing.T, path string) {
		s := &scriptState{}
		datadriven.RunFile(t, path, func(line string) string { return s.run(t, line) })
	})
}

type scriptState struct {
	ctl     *Controller
	members []Observation // a group epoch's members, until group
}

func parseBytes(s string) (float64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"kB", 1e3}, {"B", 1}}
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(n, 64)
			return v * u.mult, err
		}
	}
	return strconv.ParseFloat(s, 64)
}

func (s *scriptState) run(t *testing.T, line string) string {
	fields := strings.Fields(line)
	a := datadriven.ParseArgs(fields[1:])
	dur, float := a.Dur, a.Float
	at := func(k string) time.Time {
		if a.Str(k) == "" {
			return time.Time{}
		}
		return simBase.Add(dur(k))
	}
	bytes := func(k string) float64 { return datadriven.Parse(a, k, parseBytes) }
	level := func(k string) Level { // a name, or #N for a raw (maybe invalid) value
		return datadriven.Parse(a, k, func(s string) (Level, error) {
			var l Level
			if n, ok := strings.CutPrefix(s, "#"); ok {
				v, err := strconv.ParseUint(n, 10, 8)
				return Level(v), err
			}
			return l, l.UnmarshalText([]byte(s))
		})
	}
	observation := func() Observation {
		return Observation{
			Cut: at("cut"), Committed: at("commit"), Interval: dur("interval"),
			ChangedBytes: int64(bytes("changed")), DedupedBytes: int64(bytes("dedup")), WireBytes: int64(bytes("wire")),
			SendTime: dur("send"), CPUTime: dur("cpu"), Level: level("level"),
		}
	}
	check := func() {
		if err := a.Err(); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
	}

	switch fields[0] {
	case "config":
		c := Config{
			RPOTarget: dur("rpo"), MinInterval: dur("min"), MaxInterval: dur("max"), BandwidthCap: bytes("cap"),
			StartLevel: level("start"), Margin: float("margin"), TargetBusy: float("targetbusy"),
			MaxBusy: float("maxbusy"), MaxCPUShare: float("cpushare"),
		}
		if a.Str("levels") != "" {
			for _, n := range strings.Split(a.Str("levels"), ",") {
				var l Level
				if err := l.UnmarshalText([]byte(n)); err != nil {
					a.Fail(err)
				}
				c.Levels = append(c.Levels, l)
			}
		}
		check()
		ctl, err := New(c)
		if err != nil {
			return "error: " + strings.ReplaceAll(err.Error(), "\n", "\nerror: ")
		}
		s.ctl = ctl
		return "ok"
	case "member":
		s.members = append(s.members, observation())
		check()
		return "ok"
	case "group":
		n := max(1, int(a.Uint("repeat")))
		check()
		g := &Group{ctl: s.ctl}
		var b strings.Builder
		for i := range n {
			o := Combine(s.members)
			if i == 0 {
				fmt.Fprintf(&b, "group: cut=%s commit=%s interval=%s changed=%.1fMB wire=%.1fMB send=%s level=%s",
					rel(o.Cut), rel(o.Committed), o.Interval, float64(o.ChangedBytes)/1e6, float64(o.WireBytes)/1e6, o.SendTime, o.Level)
			}
			g.Observe(s.members)
			for j := range s.members {
				m := &s.members[j]
				m.Cut, m.Committed = m.Cut.Add(m.Interval), m.Committed.Add(m.Interval)
			}
		}
		if n > 1 {
			fmt.Fprintf(&b, "\nok: %d group epochs", n)
		}
		s.members = nil
		return b.String()
	case "observe":
		o := observation()
		n := max(1, int(a.Uint("repeat")))
		check()
		for range n {
			s.ctl.Observe(o)
			if !o.Cut.IsZero() {
				o.Cut = o.Cut.Add(o.Interval)
			}
			if !o.Committed.IsZero() {
				o.Committed = o.Committed.Add(o.Interval)
			}
		}
		if n > 1 {
			return fmt.Sprintf("ok: %d epochs", n)
		}
		return "ok"
	case "progress":
		pr := Progress{
			At: at("at"), Cut: at("cut"), Level: level("level"),
			ChangedSent: int64(bytes("sent")), ChangedLeft: int64(bytes("left")), WireSent: int64(bytes("wire")), SendTime: dur("send"),
		}
		check()
		s.ctl.ObserveProgress(pr)
		return "ok"
	case "decide":
		now := at("now")
		check()
		d := s.ctl.Decide(now)
		var b strings.Builder
		fmt.Fprintf(&b, "next=%s interval=%s level=%s lag=%s breach=%v kind=%s\n", rel(d.NextCut), d.Interval, d.Level,
			d.PredictedLag.Round(time.Millisecond), d.Breach, d.Kind)
		fmt.Fprintf(&b, "reason: %s", d.Reason)
		if a.Has("verbose") {
			e := d.Estimates
			fmt.Fprintf(&b, "\nestimates: %d observations, goodput %s (measured %s), overhead %s, dedup %.2f",
				e.Observations, fmtRate(e.Goodput), fmtRate(e.MeasuredGoodput), e.Overhead.Round(time.Millisecond), e.DedupRatio)
			if e.LiveGoodput > 0 {
				fmt.Fprintf(&b, ", live %s", fmtRate(e.LiveGoodput))
			}
			fmt.Fprintf(&b, "\ncurve: C(T) = %.3g·T^%.2f on [%s, %s]; at %s: %.1f MB changed, %.1f MB wire, dirty %s, wire %s per guest second",
				e.DirtyA, e.DirtyB, e.DirtyRange[0].Round(time.Millisecond), e.DirtyRange[1].Round(time.Millisecond), d.Interval,
				e.Changed/1e6, e.Wire/1e6, fmtRate(e.DirtyRate), fmtRate(e.WireRate))
			fmt.Fprintf(&b, "\nplan: send %s, cpu %s, busy %.2f, growth %.2f",
				e.SendTime.Round(time.Millisecond), e.CPUTime.Round(time.Millisecond), e.Busy, e.LagGrowth)
			for l := range Level(NumLevels) {
				m := " "
				if e.Measured[l] {
					m = "*"
				}
				fmt.Fprintf(&b, "\nlevel %-7s ratio %.3f%s speed %s", l, e.CompressionRatio[l], m, fmtRate(e.CompressSpeed[l]))
			}
			for _, p := range d.Plans {
				fmt.Fprintf(&b, "\nplan %-7s %-12s %s lag %s busy %.2f cpu %.2f", p.Level, p.Kind, p.Interval,
					p.PredictedLag.Round(100*time.Millisecond), p.Busy, p.CPUShare)
			}
		}
		return b.String()
	}
	t.Fatalf("unknown command %q", line)
	return ""
}

func rel(at time.Time) string {
	if at.IsZero() {
		return "zero"
	}
	return at.Sub(simBase).Round(time.Millisecond).String()
}
