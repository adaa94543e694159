package agent

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
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
	// each with its own congestion control (package stripe); 0 (auto)
	// dials AutoConnections and lets the stream use as many of them as
	// raise its goodput.
	Connections int
	// Cap, in bytes/s, caps what all the streams dialled write together
	// (0: no cap).
	Cap    float64
	Now    func() time.Time
	Logger *slog.Logger // logs a change of the connections an auto stream uses
}

// AutoConnections is the most connections a stream uses when their number
// is left to it: as many as fill a 100 Mbit/s link of 40 ms and 0.1% loss
// (see the WAN benchmark), where one loss-based connection fills a fifth.
const AutoConnections = 8

// AutoStartConnections is how many connections carry data at first on a
// path no stream has measured yet: half of AutoConnections, so that on a
// long, lossy link the stream starts near its level (one connection gets
// a fifth of it, and each level probed costs a second or two) and probes
// once, while on a short clean one the extra connections cost little.
const AutoStartConnections = AutoConnections / 2

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
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return c.Dialer(quicDialer(o.Address, o.TLS, o.Transport, o.Connections, log)), c, nil
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
func (c *Cap) Dialer(d sender.Dialer) sender.Dialer { return capDialer{c, d} }

type capDialer struct {
	c *Cap
	d sender.Dialer
}

func (cd capDialer) Dial(ctx context.Context) (io.ReadWriteCloser, error) {
	rw, err := cd.d.Dial(ctx)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithCancel(context.Background())
	return &capConn{ReadWriteCloser: rw, c: cd.c, ctx: cctx, cancel: cancel}, nil
}

func (cd capDialer) ForVM(vm string) sender.Dialer { return capDialer{cd.c, DialerFor(cd.d, vm)} }

// vmDialer is a dialer that keeps something per VM across its streams.
type vmDialer interface {
	ForVM(vm string) sender.Dialer
}

// DialerFor returns the dialer of vm's streams: d's own for vm, if it
// keeps something per VM (the connections a stream settled on, from
// which the next starts), else d.
func DialerFor(d sender.Dialer, vm string) sender.Dialer {
	if v, ok := d.(vmDialer); ok {
		return v.ForVM(vm)
	}
	return d
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
// QUIC connections, each with its own congestion control (package stripe);
// with 0 over AutoConnections, of which it uses as many as raise goodput.
func quicDialer(addr string, tlsConf *tls.Config, opts transport.Options, connections int, log *slog.Logger) *linkDialer {
	return &linkDialer{addr: addr, one: quicDialOne(addr, tlsConf, opts), n: connections, log: log, known: map[string]int{}}
}

// linkDialer dials the receiver's streams, remembering per VM how many
// connections its last auto stream found worth having, so that a stream
// resumed after a reconnect starts there instead of probing again; a VM
// with none starts where the last auto stream over the same path (any
// VM's: one receiver address) settled, or at AutoStartConnections.
type linkDialer struct {
	addr string
	one  sender.DialFunc
	n    int // 0: auto
	log  *slog.Logger

	mu    sync.Mutex
	known map[string]int // by VM
	path  int            // the last level any VM's stream found worth having
}

func (d *linkDialer) Dial(ctx context.Context) (io.ReadWriteCloser, error) { return d.dial(ctx, "") }

func (d *linkDialer) ForVM(vm string) sender.Dialer {
	return sender.DialFunc(func(ctx context.Context) (io.ReadWriteCloser, error) { return d.dial(ctx, vm) })
}

func (d *linkDialer) dial(ctx context.Context, vm string) (io.ReadWriteCloser, error) {
	if d.n == 1 {
		return d.one(ctx)
	}
	n, o := d.n, stripe.Options{ClosedByPeer: transport.ClosedByPeer}
	if n == 0 {
		n = AutoConnections
		d.mu.Lock()
		start := cmp.Or(d.known[vm], d.path, AutoStartConnections)
		d.mu.Unlock()
		o.Grow = &stripe.GrowConfig{Start: start}
		o.OnGrow = func(st stripe.Step) {
			d.mu.Lock()
			d.known[vm], d.path = st.Known, st.Known
			d.mu.Unlock()
			if st.Changed {
				d.log.Info(fmt.Sprintf("link: %d connections", st.Active), "vm", vm, "goodput_mbit_s", math.Round(st.Goodput*8/1e5)/10, "why", st.Reason)
			}
		}
	}
	c, err := stripe.Dial(ctx, n, d.one, o)
	if err != nil {
		return nil, fmt.Errorf("connect to %s over %d connections: %w", d.addr, n, err)
	}
	return c, nil
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
