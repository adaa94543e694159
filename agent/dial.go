package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync/atomic"
	"time"

	"github.com/drsync/drsync/ratelimit"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/stripe"
	"github.com/drsync/drsync/transport"
)

// senderLinger is how long a sender's Close waits, after ending its stream,
// for the receiver to close the connection. The receiver does so as soon as
// it reads the end of the stream, so this normally lasts one round trip and
// lets the receiver see a clean end rather than a lost connection.
const senderLinger = time.Second

// DialOptions configure the connection to the receiver.
type DialOptions struct {
	Address   string
	TLS       *tls.Config // verified both ways
	Transport transport.Options
	// Connections > 1 stripes each stream over that many QUIC connections,
	// each with its own congestion control (package stripe).
	Connections int
	// Cap, in bytes/s, caps what all the streams dialled write together
	// (0: no cap).
	Cap float64
	Now func() time.Time
}

// Validate checks o.
func (o *DialOptions) Validate() error {
	if o.Address == "" {
		return errors.New("no receiver address")
	}
	if o.TLS == nil {
		return errors.New("no TLS configuration")
	}
	if o.Connections < 0 || o.Connections > stripe.MaxCount {
		return fmt.Errorf("%d connections: want 1 to %d", o.Connections, stripe.MaxCount)
	}
	if o.Cap < 0 {
		return fmt.Errorf("bandwidth cap %g: must not be negative", o.Cap)
	}
	return nil
}

// Dial returns the dialer of the receiver o describes: a QUIC connection
// carrying one stream (closing the stream closes the connection), or
// several striped, under one bandwidth cap for the whole link, which
// Options.Cap hands to Reload to change (even from or to none).
func Dial(o DialOptions) (sender.Dialer, *Cap, error) {
	if err := o.Validate(); err != nil {
		return nil, nil, err
	}
	c, err := NewCap(o.Cap, o.Now)
	if err != nil {
		return nil, nil, err
	}
	return c.Dialer(quicDialer(o.Address, o.TLS, o.Transport, o.Connections)), c, nil
}

// Cap is the link's bandwidth cap, shared by every connection dialled
// under it, which can change, or be lifted or set, while they are open.
type Cap struct {
	lim  *ratelimit.Limiter
	rate atomic.Uint64 // math.Float64bits of bytes/s; 0: no cap
}

// unlimitedBurst is the limiter's burst when the cap starts lifted: the
// default burst follows the first rate, and a later one keeps it.
const unlimitedBurst = 256 << 10

// NewCap returns a cap of rate bytes/s (0: none yet).
func NewCap(rate float64, now func() time.Time) (*Cap, error) {
	if rate < 0 || math.IsNaN(rate) || math.IsInf(rate, 0) {
		return nil, fmt.Errorf("bandwidth cap %g bytes/s: must be a finite number, 0 or more", rate)
	}
	if now == nil {
		now = time.Now
	}
	lo := ratelimit.Options{Rate: rate, Now: now, Sleep: SleepCtx}
	if rate == 0 {
		// The limiter needs a rate; it is not consulted until one is set.
		lo.Rate, lo.Burst = 1<<20, unlimitedBurst
	}
	lim, err := ratelimit.New(lo)
	if err != nil {
		return nil, err
	}
	c := &Cap{lim: lim}
	c.rate.Store(math.Float64bits(rate))
	return c, nil
}

// Rate is the cap in bytes/s, 0 when there is none.
func (c *Cap) Rate() float64 { return math.Float64frombits(c.rate.Load()) }

// Set changes the cap to rate bytes/s (0: none) for every connection,
// open or to come, from their next write on.
func (c *Cap) Set(rate float64) error {
	if rate < 0 || math.IsNaN(rate) || math.IsInf(rate, 0) {
		return fmt.Errorf("bandwidth cap %g bytes/s: must be a finite number, 0 or more", rate)
	}
	if rate > 0 {
		if err := c.lim.SetRate(rate); err != nil {
			return err
		}
	}
	c.rate.Store(math.Float64bits(rate))
	return nil
}

// Dialer puts every connection d opens under c.
func (c *Cap) Dialer(d sender.Dialer) sender.Dialer {
	return sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) {
		rw, err := d.Dial(ctx)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithCancel(context.Background())
		return &capConn{ReadWriteCloser: rw, c: c, ctx: cctx, cancel: cancel}, nil
	})
}

// capChunk is the most a capConn writes per wait: no more than the least
// burst of a limiter, so that a new cap applies within one such piece.
const capChunk = 64 << 10

// capConn writes through the cap's limiter while there is a cap, directly
// otherwise, looking again at each piece of a write.
type capConn struct {
	io.ReadWriteCloser
	c      *Cap
	ctx    context.Context // ended by Close: ends a waiting write
	cancel context.CancelFunc
}

func (cc *capConn) Write(p []byte) (int, error) {
	var done int
	for len(p) > 0 {
		n := len(p)
		if cc.c.Rate() > 0 {
			n = min(n, capChunk)
			if err := cc.c.lim.Wait(cc.ctx, n); err != nil {
				return done, fmt.Errorf("rate limit: %w", net.ErrClosed)
			}
		}
		m, err := cc.ReadWriteCloser.Write(p[:n])
		done += m
		if err != nil {
			return done, err
		}
		p = p[n:]
	}
	return done, nil
}

// Close closes the connection and ends a waiting write.
func (cc *capConn) Close() error {
	cc.cancel()
	return cc.ReadWriteCloser.Close()
}

// quicDialer connects to the receiver at addr: a QUIC connection, verified
// both ways by tlsConf, carrying one stream. Closing the stream closes the
// connection. With connections > 1 the stream is striped over that many
// QUIC connections, each with its own congestion control (package stripe).
func quicDialer(addr string, tlsConf *tls.Config, opts transport.Options, connections int) sender.DialFunc {
	one := quicDialOne(addr, tlsConf, opts)
	if connections <= 1 {
		return one
	}
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		c, err := stripe.Dial(ctx, connections, one, stripe.Options{})
		if err != nil {
			return nil, fmt.Errorf("connect to %s over %d connections: %w", addr, connections, err)
		}
		return c, nil
	}
}

func quicDialOne(addr string, tlsConf *tls.Config, opts transport.Options) sender.DialFunc {
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		conn, err := transport.Dial(ctx, addr, tlsConf, opts)
		if err != nil {
			return nil, err
		}
		s, err := conn.OpenStream(ctx)
		if err != nil {
			conn.Close(0, "")
			return nil, fmt.Errorf("open stream to %s: %w", addr, err)
		}
		return transport.NewStreamConn(s, conn, senderLinger), nil
	}
}

// CappedDialer puts every connection d opens under lim.
func CappedDialer(d sender.Dialer, lim *ratelimit.Limiter) sender.Dialer {
	return sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) {
		rw, err := d.Dial(ctx)
		if err != nil {
			return nil, err
		}
		return ratelimit.NewConn(rw, lim), nil
	})
}
