package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"
)

// Bucket is a token bucket of byte credit. The zero value is not usable;
// see NewBucket. It is not safe for concurrent use.
type Bucket struct {
	rate   float64 // bytes per second
	burst  float64 // bytes
	credit float64 // may be negative: debt to wait off
	last   time.Time
}

// NewBucket returns a full bucket that refills at rate bytes/s up to burst
// bytes.
func NewBucket(rate float64, burst int) (*Bucket, error) {
	if !(rate > 0) || math.IsInf(rate, 0) {
		return nil, fmt.Errorf("ratelimit: rate %v bytes/s: must be positive and finite", rate)
	}
	if burst <= 0 {
		return nil, fmt.Errorf("ratelimit: burst %d bytes: must be positive", burst)
	}
	return &Bucket{rate: rate, burst: float64(burst), credit: float64(burst)}, nil
}

// Rate is the refill rate in bytes/s.
func (b *Bucket) Rate() float64 { return b.rate }

// Reserve takes n bytes of credit at now and returns how long to wait
// before sending them. A clock that goes back is taken as standing still.
func (b *Bucket) Reserve(now time.Time, n int) time.Duration {
	if !b.last.IsZero() && now.After(b.last) {
		b.credit = min(b.burst, b.credit+now.Sub(b.last).Seconds()*b.rate)
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
	b.credit -= float64(n)
	if b.credit >= 0 {
		return 0
	}
	return time.Duration(math.Ceil(-b.credit / b.rate * float64(time.Second)))
}

// Options configure a Limiter.
type Options struct {
	// Rate is the cap in bytes per second.
	Rate float64
	// Burst is how many bytes may go at once after an idle spell; default
	// a tenth of a second's worth, at least 64 KiB.
	Burst int
	// Now and Sleep are the clock and the way to wait; Sleep returns early
	// with ctx's error. Both are required.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
}

// Validate fills defaults and reports what is wrong.
func (o *Options) Validate() error {
	if !(o.Rate > 0) || math.IsInf(o.Rate, 0) {
		return fmt.Errorf("ratelimit: rate %v bytes/s: must be positive and finite", o.Rate)
	}
	if o.Burst == 0 {
		o.Burst = max(64<<10, int(o.Rate/10))
	}
	if o.Burst < 0 {
		return fmt.Errorf("ratelimit: burst %d: must be positive", o.Burst)
	}
	if o.Now == nil || o.Sleep == nil {
		return errors.New("ratelimit: a clock and a sleep function are required")
	}
	return nil
}

// Limiter shares one Bucket among writers. It is safe for concurrent use.
type Limiter struct {
	o  Options
	mu sync.Mutex
	b  *Bucket
}

// New returns a Limiter.
func New(o Options) (*Limiter, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	b, err := NewBucket(o.Rate, o.Burst)
	if err != nil {
		return nil, err
	}
	return &Limiter{o: o, b: b}, nil
}

// Rate is the cap in bytes/s.
func (l *Limiter) Rate() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.rate
}

// SetRate changes the cap to rate bytes/s from now on; the burst stays.
// Credit and debt already counted keep their byte values.
func (l *Limiter) SetRate(rate float64) error {
	if !(rate > 0) || math.IsInf(rate, 0) {
		return fmt.Errorf("ratelimit: rate %v bytes/s: must be positive and finite", rate)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reserve(l.o.Now(), 0) // credit earned so far at the old rate
	l.b.rate = rate
	return nil
}

// Wait blocks until n bytes may be written, or ctx ends.
func (l *Limiter) Wait(ctx context.Context, n int) error {
	l.mu.Lock()
	d := l.b.Reserve(l.o.Now(), n)
	l.mu.Unlock()
	if d <= 0 {
		return nil
	}
	return l.o.Sleep(ctx, d)
}

// Conn is a connection whose writes go no faster than a Limiter allows.
// Close also ends a write that is waiting.
type Conn struct {
	io.ReadWriteCloser
	l      *Limiter
	ctx    context.Context
	cancel context.CancelFunc
}

// NewConn puts rw under l.
func NewConn(rw io.ReadWriteCloser, l *Limiter) *Conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &Conn{ReadWriteCloser: rw, l: l, ctx: ctx, cancel: cancel}
}

// Write writes p in pieces of at most the burst, each waited for first.
func (c *Conn) Write(p []byte) (int, error) {
	var done int
	for len(p) > 0 {
		n := min(len(p), c.l.o.Burst)
		if err := c.l.Wait(c.ctx, n); err != nil {
			return done, fmt.Errorf("rate limit: %w", net.ErrClosed)
		}
		m, err := c.ReadWriteCloser.Write(p[:n])
		done += m
		if err != nil {
			return done, err
		}
		p = p[n:]
	}
	return done, nil
}

// Close closes the connection and ends a waiting write.
func (c *Conn) Close() error {
	c.cancel()
	return c.ReadWriteCloser.Close()
}
