package ratelimit

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"testing"
	"time"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func TestBucket(t *testing.T) {
	type step struct {
		at   time.Duration // since t0
		n    int
		wait time.Duration
	}
	for _, tc := range []struct {
		name  string
		rate  float64
		burst int
		steps []step
	}{
		{"within the burst", 1000, 500, []step{{0, 200, 0}, {0, 300, 0}}},
		{"debt is waited off", 1000, 500, []step{{0, 500, 0}, {0, 1000, time.Second}}},
		{"refill over time", 1000, 500, []step{{0, 500, 0}, {250 * time.Millisecond, 250, 0}, {250 * time.Millisecond, 1, time.Millisecond}}},
		{"credit capped at the burst", 1000, 500, []step{{0, 1, 0}, {time.Hour, 1500, time.Second}}},
		{"one write larger than the burst", 100, 10, []step{{0, 1010, 10 * time.Second}}},
		{"a clock going back stands still", 1000, 500, []step{{time.Second, 500, 0}, {0, 100, 100 * time.Millisecond}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := NewBucket(tc.rate, tc.burst)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				if got := b.Reserve(t0.Add(s.at), s.n); got != s.wait {
					t.Fatalf("step %d: Reserve(%v, %d) = %v, want %v", i, s.at, s.n, got, s.wait)
				}
			}
		})
	}
	for _, bad := range []struct {
		rate  float64
		burst int
	}{{0, 1}, {-1, 1}, {1, 0}} {
		if _, err := NewBucket(bad.rate, bad.burst); err == nil {
			t.Errorf("NewBucket(%v, %d) accepted", bad.rate, bad.burst)
		}
	}
}

// fakeTime is a clock that only sleeping advances.
type fakeTime struct{ now time.Time }

func (f *fakeTime) Now() time.Time { return f.now }
func (f *fakeTime) Sleep(ctx context.Context, d time.Duration) error {
	f.now = f.now.Add(d)
	return ctx.Err()
}

type sink struct{ n int }

func (s *sink) Read([]byte) (int, error)    { return 0, io.EOF }
func (s *sink) Write(p []byte) (int, error) { s.n += len(p); return len(p), nil }
func (s *sink) Close() error                { return nil }

// Two connections under one limiter share its rate: 10 MB at 1 MB/s take
// 10 s less the first burst, whichever connection writes.
func TestConnsShareTheRate(t *testing.T) {
	ft := &fakeTime{now: t0}
	l, err := New(Options{Rate: 1e6, Burst: 100e3, Now: ft.Now, Sleep: ft.Sleep})
	if err != nil {
		t.Fatal(err)
	}
	a, b := &sink{}, &sink{}
	ca, cb := NewConn(a, l), NewConn(b, l)
	buf := make([]byte, 1e6)
	for i := range 10 {
		c := ca
		if i%2 == 1 {
			c = cb
		}
		if n, err := c.Write(buf); n != len(buf) || err != nil {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
	}
	if a.n+b.n != 10e6 {
		t.Fatalf("wrote %d bytes", a.n+b.n)
	}
	if got, want := ft.now.Sub(t0), 9900*time.Millisecond; got != want {
		t.Errorf("10 MB took %v, want %v", got, want)
	}
}

// SetRate changes the pace of the writes that follow.
func TestSetRate(t *testing.T) {
	ft := &fakeTime{now: t0}
	l, err := New(Options{Rate: 1e6, Burst: 100e3, Now: ft.Now, Sleep: ft.Sleep})
	if err != nil {
		t.Fatal(err)
	}
	c := NewConn(&sink{}, l)
	buf := make([]byte, 1e6)
	if _, err := c.Write(buf); err != nil { // 0.9 s: the burst goes at once
		t.Fatal(err)
	}
	if err := l.SetRate(250e3); err != nil || l.Rate() != 250e3 {
		t.Fatalf("SetRate: %v, rate %v", err, l.Rate())
	}
	if _, err := c.Write(buf); err != nil {
		t.Fatal(err)
	}
	if got, want := ft.now.Sub(t0), 4900*time.Millisecond; got != want {
		t.Errorf("1 MB at 1 MB/s then 1 MB at 250 kB/s took %v, want %v", got, want)
	}
	for _, bad := range []float64{0, -1, math.Inf(1), math.NaN()} {
		if l.SetRate(bad) == nil {
			t.Errorf("SetRate(%v) accepted", bad)
		}
	}
}

// Close ends a write that waits for credit.
func TestCloseEndsWaitingWrite(t *testing.T) {
	l, err := New(Options{Rate: 1, Burst: 1, Now: time.Now, Sleep: func(ctx context.Context, d time.Duration) error {
		select {
		case <-time.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	c := NewConn(&sink{}, l)
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 100))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting write outlived Close")
	}
}

func TestOptions(t *testing.T) {
	o := Options{Rate: 1e9, Now: time.Now, Sleep: func(context.Context, time.Duration) error { return nil }}
	if err := o.Validate(); err != nil || o.Burst != 1e8 {
		t.Fatalf("Validate: %v, burst %d", err, o.Burst)
	}
	for _, bad := range []Options{{Rate: 0}, {Rate: 1, Burst: -1, Now: time.Now, Sleep: o.Sleep}, {Rate: 1}} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v) accepted", bad)
		}
	}
}
