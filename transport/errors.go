package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/drsync/drsync/tlsid"
)

// Marker errors, for errors.Is. The errors returned carry more detail.
var (
	// ErrUntrustedPeer: the handshake failed because one side did not
	// trust the other's certificate.
	ErrUntrustedPeer = errors.New("untrusted peer")
	// ErrIdleTimeout: nothing was heard from the peer for the idle timeout.
	ErrIdleTimeout = errors.New("connection idle timeout")
	// ErrHandshakeTimeout: the peer did not complete the handshake in time.
	ErrHandshakeTimeout = errors.New("handshake timeout")
	// ErrListenerClosed: Accept was called on, or interrupted by, Close.
	ErrListenerClosed = errors.New("listener closed")
)

// CloseError reports a connection closed on purpose by either side with
// Conn.Close.
type CloseError struct {
	Code   uint64
	Reason string
	Remote bool // closed by the peer
	err    error
}

func (e *CloseError) Error() string {
	who := "locally"
	if e.Remote {
		who = "by the peer"
	}
	if e.Reason == "" {
		return fmt.Sprintf("connection closed %s (code %d)", who, e.Code)
	}
	return fmt.Sprintf("connection closed %s (code %d): %s", who, e.Code, e.Reason)
}

func (e *CloseError) Unwrap() error { return e.err }

// ClosedByPeer says whether err is the peer closing the connection on
// purpose with code 0, as it does after its last word.
func ClosedByPeer(err error) bool {
	var ce *CloseError
	return errors.As(err, &ce) && ce.Remote && ce.Code == 0
}

// certificate-related TLS alerts a peer sends when it refuses ours.
var certAlerts = map[tls.AlertError]bool{
	42:  true, // bad_certificate
	43:  true, // unsupported_certificate
	44:  true, // certificate_revoked
	45:  true, // certificate_expired
	46:  true, // certificate_unknown
	48:  true, // unknown_ca
	116: true, // certificate_required
}

// errContext is what error translation needs to know about a connection.
type errContext struct {
	server      bool
	remote      string
	self        string // our certificate's fingerprint
	idleTimeout time.Duration
	hsTimeout   time.Duration
}

// wrap translates a quic-go error into this package's errors, keeping the
// original in the chain. op names what was being done.
func (ec errContext) wrap(op string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	peer := "client"
	if !ec.server {
		peer = "server"
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return fmt.Errorf("%s: %w: nothing received from %s %s for %s (%w)", op, ErrIdleTimeout, peer, ec.remote, ec.idleTimeout, err)
	}
	if _, ok := errors.AsType[*quic.HandshakeTimeoutError](err); ok {
		return fmt.Errorf("%s: %w: %s %s did not complete the handshake within %s (%w)", op, ErrHandshakeTimeout, peer, ec.remote, ec.hsTimeout, err)
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok {
		return fmt.Errorf("%s: %w", op, &CloseError{Code: uint64(ae.ErrorCode), Reason: ae.ErrorMessage, Remote: ae.Remote, err: err})
	}
	if te, ok := errors.AsType[*quic.TransportError](err); ok && te.ErrorCode.IsCryptoError() {
		if ue, ok := errors.AsType[*tlsid.UntrustedError](err); ok && !te.Remote {
			// ue alone reads better than quic-go's rendering around it.
			return fmt.Errorf("%s: %w: the %s's certificate was not trusted: %w", op, ErrUntrustedPeer, peer, ue)
		}
		alert := tls.AlertError(te.ErrorCode - 0x100)
		if te.Remote && certAlerts[alert] {
			// %.0w keeps quic-go's error in the chain without repeating
			// its text, which says no more than the alert.
			return fmt.Errorf("%s: %w: the %s %s refused our certificate %s (TLS alert: %s); it must pin this fingerprint or trust its CA%.0w",
				op, ErrUntrustedPeer, peer, ec.remote, ec.self, strings.TrimPrefix(alert.Error(), "tls: "), err)
		}
	}
	if _, ok := errors.AsType[*quic.StatelessResetError](err); ok {
		return fmt.Errorf("%s: %s %s no longer knows this connection (restarted?): %w", op, peer, ec.remote, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// wrapDial is wrap for the dialling phase, where the context also ends it.
// quic-go reports a handshake that went silent as an idle timeout.
func (ec errContext) wrapDial(ctx, hctx context.Context, err error) error {
	_, idle := errors.AsType[*quic.IdleTimeoutError](err)
	_, hs := errors.AsType[*quic.HandshakeTimeoutError](err)
	expired := ctx.Err() == nil && errors.Is(hctx.Err(), context.DeadlineExceeded) && errors.Is(err, context.DeadlineExceeded)
	if idle || hs || expired {
		return fmt.Errorf("dial %s: %w: the server did not complete the handshake within %s (%w)", ec.remote, ErrHandshakeTimeout, ec.hsTimeout, err)
	}
	return ec.wrap("dial "+ec.remote, err)
}
