package migstream

import (
	"errors"
	"fmt"
)

// Marker errors; test with errors.Is.
var (
	// ErrMalformed marks a stream that is structurally wrong: bad magic or
	// version, an unknown section type or RAM flag, a page outside its
	// block, a footer naming another section, a truncated stream, ...
	ErrMalformed = errors.New("migstream: malformed stream")
	// ErrUnsupported marks a valid stream that uses a feature this package
	// does not handle (XBZRLE, compression, RDMA hooks, postcopy commands,
	// iterable sections other than "ram", unknown configuration
	// subsections), or that exceeds one of its size limits.
	ErrUnsupported = errors.New("migstream: unsupported stream feature")
)

// FormatError reports where and why a stream was rejected. It matches
// ErrMalformed or ErrUnsupported with errors.Is.
type FormatError struct {
	Offset int64  // stream offset of the offending field
	Field  string // what was wrong, e.g. "RAM record flags 0x40 (XBZRLE)"
	Kind   error  // ErrMalformed or ErrUnsupported
}

func (e *FormatError) Error() string {
	word := "malformed"
	if e.Kind == ErrUnsupported {
		word = "unsupported"
	}
	return fmt.Sprintf("migstream: offset %d: %s: %s", e.Offset, e.Field, word)
}

func (e *FormatError) Unwrap() error { return e.Kind }

func malformed(off int64, format string, args ...any) error {
	return &FormatError{Offset: off, Field: fmt.Sprintf(format, args...), Kind: ErrMalformed}
}

func unsupported(off int64, format string, args ...any) error {
	return &FormatError{Offset: off, Field: fmt.Sprintf(format, args...), Kind: ErrUnsupported}
}
