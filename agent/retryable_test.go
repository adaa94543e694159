package agent

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/wire"
)

func TestRetryable(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{errors.New("connection reset"), true},
		{fmt.Errorf("x: %w", transport.ErrIdleTimeout), true},
		{&wire.Error{Code: wire.ErrBusy}, true},
		{&wire.Error{Code: wire.ErrStorage}, true},
		{&wire.Error{Code: wire.ErrDigest}, true},
		{fmt.Errorf("epoch 2: %w", &wire.Error{Code: wire.ErrUnauthorized}), false},
		{&wire.Error{Code: wire.ErrVersion}, false},
		{&wire.Error{Code: wire.ErrProtocol}, false},
		{fmt.Errorf("dial: %w", transport.ErrUntrustedPeer), false},
		{context.Canceled, false},
	}
	for _, tc := range tests {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
