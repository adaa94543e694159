package wanemu

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// t0 is the fake clock's origin; every time in these tests is an offset
// from it.
var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

const ms = time.Millisecond

type opKind int

const (
	opSend opKind = iota
	opSet
	opOutage
	opDown
	opUp
)

// op is one step of a scenario at a fake time.
type op struct {
	at   time.Duration
	kind opKind
	size int
	s    Settings
	d    time.Duration
	// For opSend: when the packet is due, or why it is dropped; flushed
	// marks a packet accepted and then lost to a later outage.
	want    time.Duration
	drop    DropReason
	flushed bool
}

func send(at time.Duration, size int, want time.Duration) op {
	return op{at: at, kind: opSend, size: size, want: want}
}

func sendLost(at time.Duration, size int, want time.Duration) op {
	return op{at: at, kind: opSend, size: size, want: want, flushed: true}
}

func dropped(at time.Duration, size int, why DropReason) op {
	return op{at: at, kind: opSend, size: size, drop: why}
}

func set(at time.Duration, s Settings) op { return op{at: at, kind: opSet, s: s} }

func outage(at, d time.Duration) op { return op{at: at, kind: opOutage, d: d} }

func down(at time.Duration) op { return op{at: at, kind: opDown} }

func up(at time.Duration) op { return op{at: at, kind: opUp} }

const mbit = 1_000_000

func TestLinkScenarios(t *testing.T) {
	cases := []struct {
		name        string
		s           Settings
		maxInFlight int
		ops         []op
	}{
		{
			name: "serialization 1 Mbit/s, 1250-byte packets leave 10 ms apart",
			s:    Settings{RateBitsPerSec: mbit, QueueBytes: 1 << 20},
			ops: []op{
				send(0, 1250, 10*ms), send(0, 1250, 20*ms), send(0, 1250, 30*ms), send(0, 1250, 40*ms),
			},
		},
		{
			name: "an idle bottleneck starts afresh",
			s:    Settings{RateBitsPerSec: mbit},
			ops:  []op{send(0, 1250, 10*ms), send(15*ms, 1250, 25*ms), send(16*ms, 125, 26*ms)},
		},
		{
			name: "delay only",
			s:    Settings{Delay: 20 * ms},
			ops:  []op{send(0, 100, 20*ms), send(1*ms, 1500, 21*ms), send(1*ms, 40, 21*ms), send(50*ms, 40, 70*ms)},
		},
		{
			name: "rate then delay",
			s:    Settings{RateBitsPerSec: mbit, Delay: 20 * ms},
			ops:  []op{send(0, 1250, 30*ms), send(0, 1250, 40*ms), send(100*ms, 625, 125*ms)},
		},
		{
			name: "queue overflow drops the tail, and room comes back as packets leave",
			s:    Settings{RateBitsPerSec: mbit, QueueBytes: 3750},
			ops: []op{
				send(0, 1250, 10*ms), send(0, 1250, 20*ms), send(0, 1250, 30*ms),
				dropped(0, 1250, DropQueue),
				dropped(9*ms, 1250, DropQueue),
				send(10*ms, 1250, 40*ms), // the first has left
				dropped(10*ms, 1250, DropQueue),
				send(10*ms, 0, 40*ms), // still fits
			},
		},
		{
			name: "an idle link takes a packet bigger than its queue",
			s:    Settings{RateBitsPerSec: mbit, QueueBytes: 100},
			ops:  []op{send(0, 1250, 10*ms), dropped(5*ms, 1250, DropQueue), send(10*ms, 1250, 20*ms)},
		},
		{
			name: "unlimited rate has no queue",
			s:    Settings{QueueBytes: 1},
			ops:  []op{send(0, 1500, 0), send(0, 1500, 0), send(0, 1500, 0)},
		},
		{
			name: "outage window loses what is in flight and what arrives during it",
			s:    Settings{Delay: 10 * ms},
			ops: []op{
				send(0, 100, 10*ms),
				sendLost(12*ms, 100, 22*ms), // 0's packet was delivered at 10 ms
				outage(15*ms, 100*ms),
				dropped(15*ms, 100, DropOutage),
				dropped(60*ms, 100, DropOutage),
				dropped(114*ms, 100, DropOutage),
				send(115*ms, 100, 125*ms),
			},
		},
		{
			name: "outage also empties the bottleneck queue",
			s:    Settings{RateBitsPerSec: mbit, QueueBytes: 2500},
			ops: []op{
				send(0, 1250, 10*ms),
				sendLost(0, 1250, 20*ms),
				outage(15*ms, 5*ms),
				send(20*ms, 1250, 30*ms), // queue empty, bottleneck idle
				send(20*ms, 1250, 40*ms),
			},
		},
		{
			name: "down until up",
			s:    Settings{Delay: 5 * ms},
			ops: []op{
				sendLost(0, 100, 5*ms),
				down(1 * ms),
				dropped(2*ms, 100, DropOutage),
				dropped(1000*ms, 100, DropOutage),
				up(1001 * ms),
				send(1001*ms, 100, 1006*ms),
			},
		},
		{
			name: "up ends an outage early",
			ops: []op{
				outage(0, time.Hour),
				dropped(1*ms, 100, DropOutage),
				up(2 * ms),
				send(2*ms, 100, 2*ms),
			},
		},
		{
			name: "faster rate applies to later packets",
			s:    Settings{RateBitsPerSec: mbit},
			ops: []op{
				send(0, 1250, 10*ms), send(0, 1250, 20*ms),
				set(0, Settings{RateBitsPerSec: 2 * mbit}),
				send(0, 1250, 25*ms), send(0, 1250, 30*ms),
			},
		},
		{
			name: "longer delay applies to later packets",
			s:    Settings{Delay: 10 * ms},
			ops: []op{
				send(0, 100, 10*ms),
				set(1*ms, Settings{Delay: 30 * ms}),
				send(1*ms, 100, 31*ms),
			},
		},
		{
			name: "shorter delay never reorders",
			s:    Settings{Delay: 50 * ms},
			ops: []op{
				send(0, 100, 50*ms),
				set(1*ms, Settings{Delay: 10 * ms}),
				send(1*ms, 100, 50*ms),  // would overtake: leaves with the first
				send(45*ms, 100, 55*ms), // no longer behind anything
			},
		},
		{
			name: "loss switched on and off",
			ops: []op{
				send(0, 100, 0),
				set(1*ms, Settings{LossProb: 1}),
				dropped(1*ms, 100, DropLoss),
				dropped(2*ms, 100, DropLoss),
				set(3*ms, Settings{}),
				send(3*ms, 100, 3*ms),
			},
		},
		{
			name:        "the in-flight bound protects the emulator",
			s:           Settings{Delay: 100 * ms},
			maxInFlight: 3000,
			ops: []op{
				send(0, 1250, 100*ms), send(0, 1250, 100*ms),
				dropped(0, 1250, DropOverload),
				send(100*ms, 1250, 200*ms), // the first two were delivered
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := NewLink(tc.s, 1, 1, tc.maxInFlight)
			var want, got []Packet
			var wantStats DirStats
			for i, o := range tc.ops {
				now := t0.Add(o.at)
				got = l.Deliver(now, got)
				switch o.kind {
				case opSet:
					l.Set(now, o.s)
				case opOutage:
					l.Outage(now, o.d)
				case opDown:
					l.SetDown(now, true)
				case opUp:
					l.SetDown(now, false)
				case opSend:
					data := make([]byte, o.size)
					data = append(data, byte(i)) // tells packets apart
					data = data[:o.size]
					at, why := l.Send(now, data)
					if why != o.drop {
						t.Fatalf("op %d: packet sent at %v: verdict %v, want %v", i, o.at, why, o.drop)
					}
					if why != Kept {
						wantStats.drop(why, o.size)
						continue
					}
					if at != t0.Add(o.want) {
						t.Fatalf("op %d: packet sent at %v due at %v, want %v", i, o.at, at.Sub(t0), o.want)
					}
					if o.flushed {
						wantStats.drop(DropOutage, o.size)
					} else {
						want = append(want, Packet{At: at, Data: data})
						wantStats.Forwarded.add(o.size)
					}
				}
			}
			got = l.Deliver(t0.Add(24*time.Hour), got)
			if _, ok := l.Next(); ok {
				t.Fatal("link still holds packets after everything is due")
			}
			if len(got) != len(want) {
				t.Fatalf("delivered %d packets, want %d", len(got), len(want))
			}
			for i := range got {
				if got[i].At != want[i].At || tag(got[i]) != tag(want[i]) {
					t.Fatalf("delivery %d: %v, want %v (or out of order)", i, got[i].At.Sub(t0), want[i].At.Sub(t0))
				}
			}
			if s := l.Stats(); s != wantStats {
				t.Fatalf("stats %+v, want %+v", s, wantStats)
			}
			if p, b := l.Held(); p != 0 || b != 0 {
				t.Fatalf("held %d packets, %d bytes after delivering all", p, b)
			}
		})
	}
}

// Deliver hands out exactly the packets due, in order, and Next tells the
// writer when to come back.
func TestLinkDeliverAndNext(t *testing.T) {
	l := NewLink(Settings{RateBitsPerSec: mbit, Delay: 5 * ms}, 1, 1, 0)
	for range 3 {
		l.Send(t0, make([]byte, 1250))
	}
	if next, ok := l.Next(); !ok || next != t0.Add(15*ms) {
		t.Fatalf("Next = %v, %v; want 15ms", next.Sub(t0), ok)
	}
	if got := l.Deliver(t0.Add(14*ms), nil); len(got) != 0 {
		t.Fatalf("delivered %d packets before any was due", len(got))
	}
	if got := l.Deliver(t0.Add(25*ms), nil); len(got) != 2 {
		t.Fatalf("delivered %d packets by 25ms, want 2", len(got))
	}
	if next, ok := l.Next(); !ok || next != t0.Add(35*ms) {
		t.Fatalf("Next = %v, %v; want 35ms", next.Sub(t0), ok)
	}
	if p, b := l.Held(); p != 1 || b != 1250 {
		t.Fatalf("Held = %d, %d; want 1, 1250", p, b)
	}
}

// Random loss drops the set fraction, and the same seed drops the same
// packets.
func TestLinkLossFraction(t *testing.T) {
	const n = 100_000
	pattern := func(seed uint64, p float64) ([]bool, DirStats) {
		l := NewLink(Settings{LossProb: p}, seed, 1, 0)
		lost := make([]bool, n)
		data := make([]byte, 1000)
		var out []Packet
		for i := range n {
			now := t0.Add(time.Duration(i) * time.Microsecond)
			_, why := l.Send(now, data)
			lost[i] = why == DropLoss
			out = l.Deliver(now, out[:0])
		}
		return lost, l.Stats()
	}
	for _, p := range []float64{0.01, 0.1, 0.5} {
		t.Run(fmt.Sprint(p), func(t *testing.T) {
			lost, st := pattern(7, p)
			frac := float64(st.Loss.Packets) / n
			// Five standard deviations of a binomial fraction.
			tol := 5 * math.Sqrt(p*(1-p)/n)
			if math.Abs(frac-p) > tol {
				t.Fatalf("lost %.4f of packets, want %.4f ± %.4f", frac, p, tol)
			}
			if st.Forwarded.Packets+st.Loss.Packets != n || st.Dropped() != st.Loss {
				t.Fatalf("stats do not add up: %+v", st)
			}
			again, _ := pattern(7, p)
			other, _ := pattern(8, p)
			same, differ := true, false
			for i := range lost {
				same = same && lost[i] == again[i]
				differ = differ || lost[i] != other[i]
			}
			if !same {
				t.Fatal("the same seed lost different packets")
			}
			if !differ {
				t.Fatal("another seed lost the same packets")
			}
		})
	}
}

// A sender at twice the bottleneck rate gets the bottleneck rate through,
// packets leave back to back, and the rest is dropped at the queue.
func TestLinkSaturation(t *testing.T) {
	l := NewLink(Settings{RateBitsPerSec: mbit, Delay: 20 * ms, QueueBytes: 12500}, 1, 1, 0)
	var out []Packet
	for i := range 400 { // 2 Mbit/s for 2 s
		now := t0.Add(time.Duration(i) * 5 * ms)
		out = l.Deliver(now, out)
		l.Send(now, make([]byte, 1250))
	}
	out = l.Deliver(t0.Add(time.Hour), out)
	// 200 packets fit through in 2 s, plus the 10 the queue holds.
	if len(out) < 200 || len(out) > 212 {
		t.Fatalf("delivered %d packets, want about 210", len(out))
	}
	for i := 1; i < len(out); i++ {
		if d := out[i].At.Sub(out[i-1].At); d != 10*ms {
			t.Fatalf("packets %d and %d delivered %v apart, want 10ms", i-1, i, d)
		}
	}
	st := l.Stats()
	if st.Queue.Packets+st.Forwarded.Packets != 400 {
		t.Fatalf("stats %+v do not add up to 400 packets", st)
	}
	if first := out[0].At.Sub(t0); first != 30*ms {
		t.Fatalf("first delivery at %v, want 30ms (10ms serialization + 20ms delay)", first)
	}
}

// Jitter varies the delay within its bounds without reordering.
func TestLinkJitter(t *testing.T) {
	l := NewLink(Settings{Delay: 20 * ms, Jitter: 5 * ms}, 3, 1, 0)
	var sum time.Duration
	var last time.Time
	const n = 2000
	for i := range n {
		now := t0.Add(time.Duration(i) * 20 * ms) // far apart: no clamping
		at, why := l.Send(now, make([]byte, 100))
		if why != Kept {
			t.Fatal(why)
		}
		d := at.Sub(now)
		if d < 15*ms || d > 25*ms {
			t.Fatalf("packet %d delayed %v, want 15ms..25ms", i, d)
		}
		if at.Before(last) {
			t.Fatalf("packet %d reordered", i)
		}
		last = at
		sum += d
	}
	if mean := sum / n; mean < 19*ms || mean > 21*ms {
		t.Fatalf("mean delay %v, want about 20ms", mean)
	}
	// Packets closer together than the jitter leave in order.
	for i := range n {
		l.Send(t0.Add(time.Hour+time.Duration(i)*100*time.Microsecond), make([]byte, 100))
	}
	var prev time.Time
	for _, p := range l.Deliver(t0.Add(2*time.Hour), nil) {
		if p.At.Before(prev) {
			t.Fatal("reordered")
		}
		prev = p.At
	}
}

// The rate's rounding does not drift over many packets.
func TestLinkSerializationExact(t *testing.T) {
	l := NewLink(Settings{RateBitsPerSec: 3_000_000, QueueBytes: 1 << 30}, 1, 1, 1<<30)
	var at time.Time
	for range 30_000 {
		at, _ = l.Send(t0, make([]byte, 1000))
	}
	// 30 000 × 8000 bits at 3 Mbit/s is exactly 80 s.
	if d := at.Sub(t0); d != 80*time.Second {
		t.Fatalf("last packet due at %v, want 80s", d)
	}
}

// tag is the byte the scenario put just past a packet's end.
func tag(p Packet) byte { return p.Data[:len(p.Data)+1][len(p.Data)] }

func TestSettingsDefaults(t *testing.T) {
	cases := []struct {
		s    Settings
		want int
	}{
		{Settings{}, MinDefaultQueueBytes},
		{Settings{RateBitsPerSec: mbit, Delay: 20 * ms}, MinDefaultQueueBytes},
		{Settings{RateBitsPerSec: 10 * mbit, Delay: 20 * ms}, 75_000},   // 1.5 × 10 Mbit/s × 40 ms
		{Settings{RateBitsPerSec: 100 * mbit, Delay: 50 * ms}, 1875000}, // 1.5 × 100 Mbit/s × 100 ms
		{Settings{RateBitsPerSec: 10 * mbit, Delay: 20 * ms, QueueBytes: 5000}, 5000},
	}
	for _, tc := range cases {
		if got := tc.s.normalize().queueLimit(); got != tc.want {
			t.Errorf("%+v: queue %d, want %d", tc.s, got, tc.want)
		}
	}
	n := Settings{Delay: -1, Jitter: -1, RateBitsPerSec: -5, LossProb: math.NaN(), QueueBytes: -3}.normalize()
	if n != (Settings{}) {
		t.Errorf("negative settings normalize to %+v", n)
	}
	if n := (Settings{LossProb: 3}).normalize(); n.LossProb != 1 {
		t.Errorf("loss 3 normalizes to %v", n.LossProb)
	}
}

func TestOwnedPID(t *testing.T) {
	for name, want := range map[string]int{
		"drw-123-4-a": 123, "drw-9-bench-b": 9, "drw-x-1-a": 0, "other-1-2": 0, "drw-": 0, "drw--1": 0,
	} {
		pid, ok := ownedPID(name)
		if ok != (want != 0) || pid != want && ok {
			t.Errorf("ownedPID(%q) = %d, %v; want %d", name, pid, ok, want)
		}
	}
}
