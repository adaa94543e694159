package wire

import "fmt"

// Error frames double as Go errors, so a peer's refusal travels up the
// caller's stack unchanged and can be matched with errors.As.
func (e *Error) Error() string {
	return fmt.Sprintf("peer refused: %s: %s", e.Code, e.Message)
}

func (c ErrorCode) String() string {
	switch c {
	case ErrProtocol:
		return "protocol error"
	case ErrUnauthorized:
		return "unauthorized"
	case ErrVersion:
		return "version mismatch"
	case ErrDigest:
		return "digest mismatch"
	case ErrStorage:
		return "storage failure"
	case ErrBusy:
		return "busy"
	case ErrInternal:
		return "internal error"
	case ErrTakenOver:
		return "taken over"
	}
	return fmt.Sprintf("error %d", uint16(c))
}

// Retryable reports whether the same request may succeed later without an
// operator changing anything.
func (c ErrorCode) Retryable() bool {
	switch c {
	case ErrStorage, ErrBusy, ErrDigest, ErrInternal:
		return true
	}
	return false
}
