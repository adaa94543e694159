package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/wire"
)

func TestFixedPacing(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	res := func(cut time.Time) *sender.Result {
		return &sender.Result{Cut: cut, DataBytes: 10 << 20, WireBytes: 5 << 20, SendTime: time.Second, Compression: wire.CompressFast}
	}
	cont, err := newPacer(Pacing{Mode: Continuous, MinInterval: 10 * time.Second}, 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	pc := cont.committed(res(t0.Add(time.Minute)), t0.Add(time.Minute), t0.Add(time.Minute+2*time.Second))
	if !pc.next.Equal(t0.Add(70 * time.Second)) {
		t.Errorf("continuous: next at %s", pc.next)
	}
	if pc.flow.EpochSeconds != 0 || pc.flow.GoodputBytesPerSecond != 5<<20 {
		t.Errorf("first epoch flow %+v: no interval yet, goodput 5 MiB/s", pc.flow)
	}
	pc = cont.committed(res(t0.Add(80*time.Second)), t0.Add(80*time.Second), t0.Add(82*time.Second))
	if pc.flow.EpochSeconds != 20 || pc.flow.DirtyBytesPerSecond != float64(10<<20)/20 {
		t.Errorf("second epoch flow %+v: 20 s covered, 10 MiB changed", pc.flow)
	}

	sched, err := newPacer(Pacing{Mode: Scheduled, Schedule: 15 * time.Minute}, 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ start, want time.Duration }{
		{0, 15 * time.Minute},
		{15*time.Minute + 3*time.Second, 30 * time.Minute}, // late start keeps the grid
		{47 * time.Minute, 60 * time.Minute},
	} {
		pc := sched.committed(res(t0.Add(c.start)), t0.Add(c.start), t0.Add(c.start+time.Second))
		if !pc.next.Equal(t0.Add(c.want)) {
			t.Errorf("scheduled, started at +%s: next at +%s, want +%s", c.start, pc.next.Sub(t0), c.want)
		}
	}
}

// Adaptive pacing: on a link that carries the changes easily the epochs
// stay short; when the link slows to a quarter they lengthen and, if the
// target is out of reach, the breach is reported once when it begins and
// once when it ends.
func TestAdaptivePacing(t *testing.T) {
	v := Pacing{Mode: Continuous, RPOTarget: time.Minute, Compression: wire.CompressFast, AutoCompression: true}
	if err := v.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := newPacer(v, 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	now := t0
	const dirty = 2e6 // bytes of changes per second of guest time
	level := wire.CompressFast
	var lastIv time.Duration = 10 * time.Second
	began, ended := 0, 0
	var slowIntervals, fastIntervals []float64
	for i := range 60 {
		rate := 20e6 // bytes/s on the wire
		if i >= 20 && i < 40 {
			rate = 0.8e6 // under the wire bytes the guest makes per second
		}
		cut := now
		changed := dirty * lastIv.Seconds()
		wireB := changed * 0.5
		send := time.Duration(wireB / rate * float64(time.Second))
		commit := cut.Add(200*time.Millisecond + send)
		pc := p.committed(&sender.Result{Cut: cut, DataBytes: uint64(changed), WireBytes: uint64(wireB), SendTime: send,
			CompressTime: time.Duration(changed / 300e6 * float64(time.Second)), Compression: level}, cut, commit)
		if pc.breachBegan {
			began++
		}
		if pc.breachEnded {
			ended++
		}
		if pc.flow.RPOTargetSeconds != 60 || pc.flow.Plan == "" || pc.flow.NextEpochSeconds <= 0 {
			t.Fatalf("epoch %d: flow %+v lacks the plan", i, pc.flow)
		}
		switch {
		case i >= 30 && i < 40:
			slowIntervals = append(slowIntervals, pc.flow.NextEpochSeconds)
		case i >= 50:
			fastIntervals = append(fastIntervals, pc.flow.NextEpochSeconds)
		}
		level = pc.level
		next := pc.next
		if next.Before(commit) {
			next = commit
		}
		lastIv = next.Sub(cut)
		now = next
	}
	slow, fast := mean(slowIntervals), mean(fastIntervals)
	t.Logf("epoch length: %.1fs on the fast link, %.1fs on the slow one; breach began %d, ended %d times", fast, slow, began, ended)
	if !(slow > 1.5*fast) {
		t.Errorf("epochs did not lengthen on the slow link: %.1fs vs %.1fs", slow, fast)
	}
	if began != 1 || ended != 1 {
		t.Errorf("breach began %d and ended %d times, want once each", began, ended)
	}
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// In flight: the progress of an epoch on a link that slows raises the
// breach once, before the commit, and the commit does not raise it again;
// the pacer reads no clock, so the instants are made up.
func TestPacingInFlight(t *testing.T) {
	v := Pacing{Mode: Continuous, RPOTarget: time.Minute, MinInterval: 20 * time.Second, Compression: wire.CompressNone}
	if err := v.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := newPacer(v, 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	// 2 MB/s of changes on a 5 MB/s link, 20 s epochs.
	for i := range 4 {
		cut := at(20 * float64(i+1))
		pc := p.committed(&sender.Result{Cut: cut, DataBytes: 40e6, WireBytes: 40e6, SendTime: 8 * time.Second, Compression: wire.CompressNone},
			cut, cut.Add(8500*time.Millisecond))
		if pc.flow.BreachPredicted {
			t.Fatalf("epoch %d: breach on a link with headroom: %s", i, pc.flow.Plan)
		}
	}
	cut := at(100)
	progress := func(now, sent float64) pace {
		t.Helper()
		pc, ok := p.inFlight(sender.Progress{Epoch: 5, Cut: cut, AllBytes: 40e6, SentBytes: uint64(sent * 1e6), LeftBytes: uint64((40 - sent) * 1e6),
			WireBytes: uint64(sent * 1e6), SendTime: at(now).Sub(at(100.5)), Compression: wire.CompressNone}, at(now), at(now))
		if !ok {
			t.Fatal("no plan in flight with adaptive epochs")
		}
		return pc
	}
	// On course at 5 MB/s.
	if pc := progress(102.5, 10); pc.flow.BreachPredicted || pc.breachBegan || pc.flow.LiveGoodputBps != 5e6 {
		t.Fatalf("on course: %+v", pc.flow)
	}
	// Then 0.5 MB/s for 5 s, 27.5 s after the last committed cut.
	progress(104.5, 11)
	pc := progress(107.5, 12.5)
	if !pc.breachBegan || !pc.flow.BreachPredicted || !(pc.flow.PredictedLagSeconds > 54) || !strings.Contains(pc.flow.Plan, "in flight") {
		t.Fatalf("slow link: began %v, flow %+v", pc.breachBegan, pc.flow)
	}
	if pc := progress(108.5, 13); pc.breachBegan || !pc.flow.BreachPredicted {
		t.Fatalf("still slow: the breach began again or ended: %+v", pc)
	}
	// The commit (at the slow rate) keeps the breach without a new warning.
	pc = p.committed(&sender.Result{Cut: cut, DataBytes: 40e6, WireBytes: 40e6, SendTime: 60 * time.Second, Compression: wire.CompressNone}, cut, at(161))
	if pc.breachBegan || !pc.flow.BreachPredicted || pc.flow.LiveGoodputBps != 0 {
		t.Fatalf("commit: began %v, flow %+v", pc.breachBegan, pc.flow)
	}
	// Without adaptive epochs there is nothing to plan in flight.
	fixed, err := newPacer(Pacing{Mode: Continuous, MinInterval: 10 * time.Second}, 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := fixed.inFlight(sender.Progress{Cut: cut}, at(101), at(101)); ok {
		t.Error("a fixed interval planned in flight")
	}
}
