package agent

import (
	"context"
	"errors"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Backoff between failed attempts: 1 s doubling to 60 s. A link that is down
// for hours is probed once a minute; a short blip costs a second or two.
const (
	backoffInitial = time.Second
	backoffMax     = time.Minute
)

// epochRunner runs one epoch. *sender.Sender is one; so is retrier.
type epochRunner interface {
	RunEpoch(ctx context.Context) (*sender.Result, error)
}

// retrier decorates an epochRunner: a failure that may go away by itself
// is retried after a pause that doubles from initial to max, and shrinks back
// after a success. *sender.Sender resumes the epoch in flight on the next
// call, so a retry does not start over.
type retrier struct {
	next         epochRunner
	initial, max time.Duration
	// retries bounds the retries of one RunEpoch call; negative means
	// retry until success or a permanent error.
	retries int
	// sleep waits d or until ctx ends; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error
	// onFailure, if set, is told of every failed attempt; wait is the pause
	// before the next attempt, 0 if there will be none.
	onFailure func(err error, wait time.Duration)

	delay time.Duration
}

func newRetrier(next epochRunner, retries int) *retrier {
	return &retrier{next: next, initial: backoffInitial, max: backoffMax, retries: retries, sleep: SleepCtx}
}

// RunEpoch implements epochRunner.
func (r *retrier) RunEpoch(ctx context.Context) (*sender.Result, error) {
	for attempt := 0; ; attempt++ {
		res, err := r.next.RunEpoch(ctx)
		if err == nil {
			r.delay = 0
			return res, nil
		}
		if ctx.Err() != nil {
			// Stopped (SIGTERM, shutdown): the epoch did not fail, and
			// the next start resumes it.
			return nil, err
		}
		if !retryable(err) || (r.retries >= 0 && attempt >= r.retries) {
			if r.onFailure != nil {
				r.onFailure(err, 0)
			}
			return nil, err
		}
		if r.delay == 0 {
			r.delay = r.initial
		} else {
			r.delay = min(2*r.delay, r.max)
		}
		if r.onFailure != nil {
			r.onFailure(err, r.delay)
		}
		if serr := r.sleep(ctx, r.delay); serr != nil {
			return nil, err
		}
	}
}

// retryable reports whether err may go away without an operator: network
// trouble, a busy or temporarily failing receiver, a source that changed
// under the epoch. A refusal (certificate, authorization, version), a
// protocol violation or an invalid name will fail the same way every time.
func retryable(err error) bool {
	var we *wire.Error
	if errors.As(err, &we) {
		return we.Code.Retryable()
	}
	switch {
	case errors.Is(err, context.Canceled),
		errors.Is(err, transport.ErrUntrustedPeer),
		errors.Is(err, tlsid.ErrUntrusted),
		errors.Is(err, tlsid.ErrExpired),
		errors.Is(err, vmspec.ErrInvalidName),
		errors.Is(err, qmp.ErrUnsupportedVersion),
		errors.Is(err, livecut.ErrDiskNotFound),
		errors.Is(err, livecut.ErrSwitchedBack),
		errors.Is(err, ErrDomainNotRunning),
		errors.Is(err, sender.ErrUnusableSource):
		return false
	}
	return true
}
