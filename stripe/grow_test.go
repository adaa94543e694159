package stripe

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/internal/datadriven"
)

// Data-driven tests of the Grower: each file in testdata/grow-*.txt is a
// script of commands, each followed by "----" and its expected output up
// to a blank line. Lines starting with # are comments. Run with -rewrite
// to regenerate the expected output (then read the diff).
//
//	config max=8 start=1 window=500ms rtts=8 gain=0.15 busy=0.2 reprobe=2m drop=0.5
//	path 1=2.2 2=4.3 4=9.9 8=11.8 [app=20]
//	run for=5s [step=100ms] [rtt=40ms] [all]
//	sample at=1s bytes=1e6 waiting=500ms [rtt=40ms]
//
// path sets the goodput, in MB/s, that a number of connections carrying
// data gets (a level between two given ones gets the lower one's), and
// app how fast the sender produces data (default: without limit); the
// writer waits for the connections the share of the time they are slower
// than the sender. run feeds the Grower a sample every step for the given
// time and prints its windows, a run of windows with the same outcome as
// its first and how many more (all prints each), then the level reached. sample feeds one raw
// sample (times after the script's start, cumulative counters).
func TestGrowScripts(t *testing.T) {
	datadriven.Walk(t, "testdata/grow-*.txt", func(t *testing.T, path string) {
		s := &growScript{}
		datadriven.RunFile(t, path, func(line string) string { return s.run(t, line) })
	})
}

var growBase = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

type growScript struct {
	g       *Grower
	path    map[int]float64 // bytes/s by level
	app     float64         // bytes/s; 0: no limit
	now     time.Duration
	bytes   float64
	waiting time.Duration
}

// goodput is what level connections get on the path, and the share of the
// time the writer waits for them.
func (s *growScript) goodput(level int) (float64, float64) {
	var levels []int
	for l := range s.path {
		levels = append(levels, l)
	}
	sort.Ints(levels)
	var r float64
	for _, l := range levels {
		if l <= level {
			r = s.path[l]
		}
	}
	if s.app > 0 && s.app <= r {
		return s.app, 0
	}
	if s.app > 0 {
		return r, 1 - r/s.app
	}
	return r, 1
}

func (s *growScript) run(t *testing.T, line string) string {
	fields := strings.Fields(line)
	a := datadriven.ParseArgs(fields[1:])
	dur, num := a.Dur, a.Float
	check := func() {
		if err := a.Err(); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
	}
	switch fields[0] {
	case "config":
		c := GrowConfig{Max: int(num("max")), Start: int(num("start")), Window: dur("window"), RTTs: int(num("rtts")),
			Gain: num("gain"), Busy: num("busy"), Reprobe: dur("reprobe"), Drop: num("drop")}
		check()
		g, err := NewGrower(c)
		if err != nil {
			return "error: " + err.Error()
		}
		*s = growScript{g: g, path: s.path, app: s.app}
		return fmt.Sprintf("ok: %d of %d connections", g.Active(), g.c.Max)
	case "path":
		s.path, s.app = map[int]float64{}, 0
		for _, k := range a.Keys() {
			if k == "app" {
				s.app = num(k) * 1e6
				continue
			}
			l, err := strconv.Atoi(k)
			if err != nil {
				a.Fail(err)
			}
			s.path[l] = num(k) * 1e6
		}
		check()
		return "ok"
	case "run":
		step := dur("step")
		if step == 0 {
			step = 100 * time.Millisecond
		}
		end := s.now + dur("for")
		rtt := dur("rtt")
		all := a.Has("all")
		check()
		var b strings.Builder
		var last string
		more := 0
		flush := func() {
			if more > 0 {
				fmt.Fprintf(&b, "... %d more to %s\n", more, s.now)
			}
			more = 0
		}
		for s.now < end {
			r, busy := s.goodput(s.g.Active())
			s.now += step
			s.bytes += r * step.Seconds()
			s.waiting += time.Duration(busy * float64(step))
			st := s.g.Observe(Sample{At: growBase.Add(s.now), Bytes: int64(math.Round(s.bytes)), Waiting: s.waiting, RTT: rtt})
			if !st.Window {
				continue
			}
			if key := fmt.Sprint(st.Reason, st.Active); key != last || all {
				flush()
				last = key
				fmt.Fprintf(&b, "%s: %s\n", s.now, fmtStep(st))
			} else {
				more++
			}
		}
		flush()
		fmt.Fprintf(&b, "%s: %d connections", s.now, s.g.Active())
		return b.String()
	case "sample":
		smp := Sample{At: growBase.Add(dur("at")), Bytes: int64(num("bytes")), Waiting: dur("waiting"), RTT: dur("rtt")}
		check()
		st := s.g.Observe(smp)
		if !st.Window {
			return fmt.Sprintf("no window: %d connections", st.Active)
		}
		return fmtStep(st)
	}
	t.Fatalf("unknown command %q", line)
	return ""
}

func fmtStep(st Step) string {
	return fmt.Sprintf("%s window, %.1f MB/s, busy %.2f: %s; %d connections (%d known)", st.Length, st.Goodput/1e6, st.Busy, st.Reason, st.Active, st.Known)
}
