package wire

import (
	"errors"
	"fmt"
)

// ErrMalformed marks every error caused by bytes that are not a valid frame,
// or by a frame whose fields break a rule of the codec. Test with errors.Is.
// A peer that sends a malformed frame is broken or hostile; the connection
// should be closed.
var ErrMalformed = errors.New("malformed frame")

// ErrChecksum marks a frame whose CRC does not match its bytes. It wraps
// ErrMalformed.
var ErrChecksum error = &markerError{"checksum mismatch"}

// ErrTooLarge marks a frame whose length, or whose declared decompressed
// length, exceeds the bounds. It wraps ErrMalformed.
var ErrTooLarge error = &markerError{"frame too large"}

// markerError is a sentinel that is also an ErrMalformed.
type markerError struct{ msg string }

func (e *markerError) Error() string { return e.msg }
func (e *markerError) Unwrap() error { return ErrMalformed }

// FrameError is the error the codec returns for a frame it cannot encode or
// decode. Its text names the frame type and what is wrong, e.g.
//
//	wire: DiskExtent: data length 5000000 exceeds 4194304: malformed frame
type FrameError struct {
	Type   Type   // frame type as read from the header or given to Encode
	Detail string // what is wrong, naming the field
	// Err is ErrMalformed, ErrChecksum, ErrTooLarge or io.ErrUnexpectedEOF.
	Err error
}

func (e *FrameError) Error() string {
	return "wire: " + e.Type.String() + ": " + e.Detail + ": " + e.Err.Error()
}

func (e *FrameError) Unwrap() error { return e.Err }

func malformed(t Type, format string, args ...any) error {
	return &FrameError{Type: t, Detail: fmt.Sprintf(format, args...), Err: ErrMalformed}
}
