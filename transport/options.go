package transport

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// Defaults applied to zero Options fields.
const (
	DefaultIdleTimeout      = 15 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultResetProbe       = time.Second
)

// Options tune a connection's liveness checks.
type Options struct {
	// IdleTimeout closes the connection when nothing has been received from
	// the peer for this long. The smaller of both sides' values applies.
	IdleTimeout time.Duration
	// KeepAlive is the interval of pings sent while the connection is
	// otherwise quiet; it must be shorter than IdleTimeout. Zero means a
	// third of IdleTimeout, so that a couple of lost pings are tolerated.
	KeepAlive time.Duration
	// HandshakeTimeout bounds Dial, from the first packet to the server's
	// acceptance, and the handshake of each incoming connection.
	HandshakeTimeout time.Duration
	// OnReject, if set on a listener, is called for each incoming
	// connection refused because the client's certificate is not trusted.
	// The error names the presented fingerprint. It runs inside the
	// handshake and must not block. A client that refuses the server's
	// certificate is not reported: its handshake simply never completes.
	OnReject func(remote net.Addr, err error)
	// ResetKey, if set on a listener, is the secret from which QUIC
	// stateless-reset tokens are derived. A listener restarted with the same
	// key (derive it from a secret that survives restarts, such as the
	// identity's private key) answers packets of its predecessor's
	// connections with a reset, so peers learn at once that the connection
	// is gone instead of waiting for IdleTimeout. Closing such a listener
	// also closes the connections it accepted.
	ResetKey *[32]byte
	// ResetProbe is how often a dialed connection sends the listener a
	// small datagram, whatever else it sends. A listener restarted with
	// the same ResetKey answers only packets longer than a stateless
	// reset (42 bytes in quic-go) with one, and QUIC's keep-alive PINGs
	// and ACKs are shorter: a client that is only waiting for its peer
	// (a sender waiting for a commit acknowledgement) would otherwise
	// learn of the restart only at IdleTimeout. DefaultResetProbe if 0.
	ResetProbe time.Duration
}

// DefaultOptions returns the options used for zero fields.
func DefaultOptions() Options {
	return Options{}.withDefaults()
}

func (o Options) withDefaults() Options {
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = o.IdleTimeout / 3
	}
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.ResetProbe == 0 {
		o.ResetProbe = DefaultResetProbe
	}
	return o
}

// Validate reports options that cannot work. Zero fields are valid: they
// take defaults.
func (o Options) Validate() error {
	if o.IdleTimeout < 0 || o.KeepAlive < 0 || o.HandshakeTimeout < 0 || o.ResetProbe < 0 {
		return errors.New("transport options: durations must not be negative")
	}
	d := o.withDefaults()
	if d.KeepAlive >= d.IdleTimeout {
		return fmt.Errorf("transport options: keepalive %s must be shorter than idle timeout %s", d.KeepAlive, d.IdleTimeout)
	}
	return nil
}

func (o Options) quicConfig(server bool) *quic.Config {
	c := &quic.Config{
		HandshakeIdleTimeout: o.HandshakeTimeout,
		MaxIdleTimeout:       o.IdleTimeout,
		KeepAlivePeriod:      o.KeepAlive,
		// One frame stream per connection; a little slack costs nothing.
		MaxIncomingStreams: 4,
		// Clients probe with datagrams (ResetProbe); listeners receive
		// and drop them (quic-go keeps at most 128 unread).
		EnableDatagrams: true,
	}
	if server {
		c.MaxIncomingUniStreams = -1
	} else {
		// Only the admission stream flows from server to client.
		c.MaxIncomingUniStreams = 1
	}
	return c
}
