package epochctl

import (
	"encoding/binary"
	"math"
	"reflect"
	"testing"
	"time"
)

// fuzzReader hands out values from the fuzzer's bytes, zeros when they run
// out.
type fuzzReader struct{ b []byte }

func (r *fuzzReader) u64() uint64 {
	var buf [8]byte
	n := copy(buf[:], r.b)
	r.b = r.b[n:]
	return binary.LittleEndian.Uint64(buf[:])
}

func (r *fuzzReader) u8() uint8 { return uint8(r.u64() >> 56) }

// scaled returns a value spread over many orders of magnitude, negative,
// zero or extreme now and then.
func (r *fuzzReader) scaled(unit float64) int64 {
	v := r.u64()
	switch v % 16 {
	case 0:
		return 0
	case 1:
		return -int64(v >> 8)
	case 2:
		return math.MaxInt64
	case 3:
		return math.MinInt64
	case 4:
		return int64(v >> 1)
	}
	exp := float64((v>>4)%64)/4 - 4 // 10^-4 .. 10^12 units
	mant := 1 + float64(v>>32)/float64(1<<32)
	return int64(min(unit*mant*math.Pow(10, exp), math.MaxInt64/2))
}

// FuzzController feeds random configurations and observation sequences.
// Decide must never panic, and every decision must hold: Interval within
// [MinInterval, MaxInterval], NextCut after the last cut and not before
// now, finite estimates, a one-line reason, and the same answer when asked
// twice.
func FuzzController(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x3c\x05\x78\x00\x0f" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"))
	seed := make([]byte, 0, 600)
	for i := range 600 {
		seed = append(seed, byte(i*37+11))
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &fuzzReader{b: data}
		cfg := Config{
			RPOTarget:    (time.Duration(r.u8()) + 1) * time.Second,
			BandwidthCap: float64(r.scaled(1e6)),
			StartLevel:   Level(r.u8() % NumLevels),
		}
		cfg.MinInterval = cfg.RPOTarget * (time.Duration(r.u8()%9) + 1) / 10
		cfg.MaxInterval = cfg.MinInterval * (time.Duration(r.u8()%50) + 1)
		if m := r.u8(); m%4 == 0 {
			cfg.Levels = []Level{cfg.StartLevel}
		}
		if cfg.BandwidthCap < 0 {
			cfg.BandwidthCap = 0
		}
		ctl, err := New(cfg)
		if err != nil {
			t.Fatalf("config %+v: %v", cfg, err)
		}
		cfg = ctl.Config()
		base := time.Unix(1e9, 0)
		var lastCut time.Time
		now := base
		for len(r.b) > 0 {
			o := Observation{
				Interval:     time.Duration(r.scaled(float64(time.Second))),
				ChangedBytes: r.scaled(1e6),
				DedupedBytes: r.scaled(1e5),
				WireBytes:    r.scaled(1e6),
				SendTime:     time.Duration(r.scaled(float64(time.Second))),
				CPUTime:      time.Duration(r.scaled(float64(time.Second))),
				Level:        Level(r.u8() % (NumLevels + 2)),
			}
			step := time.Duration(r.scaled(float64(time.Second))) % (1000 * time.Hour)
			switch r.u8() % 4 {
			case 0: // no times
			case 1: // time goes backwards
				o.Cut, o.Committed = now.Add(-step), now.Add(step/2)
			default:
				o.Cut = now.Add(step / 3)
				o.Committed = o.Cut.Add(time.Duration(r.scaled(float64(time.Second))) % (1000 * time.Hour))
			}
			ctl.Observe(o)
			if !o.Cut.IsZero() && (lastCut.IsZero() || o.Cut.After(lastCut)) {
				lastCut = o.Cut
			}
			if o.Committed.After(now) {
				now = o.Committed
			}
			at := now.Add(time.Duration(r.scaled(float64(time.Millisecond))) % time.Hour)
			if r.u8()%2 == 0 { // an epoch in flight, maybe a stale or odd report
				pr := Progress{
					Cut:         now.Add(time.Duration(r.scaled(float64(time.Millisecond))) % time.Hour),
					Level:       Level(r.u8() % (NumLevels + 2)),
					ChangedSent: r.scaled(1e6), ChangedLeft: r.scaled(1e6), WireSent: r.scaled(1e6),
					SendTime: time.Duration(r.scaled(float64(time.Second))),
				}
				pr.At = pr.Cut.Add(time.Duration(r.scaled(float64(time.Millisecond))) % time.Hour)
				ctl.ObserveProgress(pr)
				at = later(at, pr.At)
			}
			d := ctl.Decide(at)
			checkDecision(t, cfg, d, lastCut, at)
			if again := ctl.Decide(at); !reflect.DeepEqual(again, d) {
				t.Fatalf("Decide is not repeatable:\n%+v\n%+v", d, again)
			}
			if !cfg.allowed(d.Level) {
				t.Fatalf("level %s not allowed (%v)", d.Level, cfg.Levels)
			}
		}
	})
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
