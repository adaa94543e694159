package nbd

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// Marker errors; test with errors.Is.
var (
	// ErrProtocol marks a server that violated the NBD protocol. The
	// connection is unusable afterwards.
	ErrProtocol = errors.New("nbd: protocol violation")
	// ErrUnsupported marks a server lacking a feature the client needs
	// (fixed newstyle negotiation, structured replies for metadata, ...).
	ErrUnsupported = errors.New("nbd: unsupported by server")
	// ErrUnknownExport marks a server that does not know the requested export.
	ErrUnknownExport = errors.New("nbd: unknown export")
	// ErrMetaContextUnavailable marks a metadata context that the server did
	// not select, or that was not requested when the client connected.
	ErrMetaContextUnavailable = errors.New("nbd: metadata context unavailable")
	// ErrClosed is returned by calls on a closed Client.
	ErrClosed = errors.New("nbd: client closed")
)

// protocolError describes one protocol violation; it matches ErrProtocol.
type protocolError struct{ msg string }

func (e *protocolError) Error() string        { return "protocol violation: " + e.msg }
func (e *protocolError) Is(target error) bool { return target == ErrProtocol }

func protoErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// OptionError is a server's error reply to a handshake option.
type OptionError struct {
	Option  uint32 // NBD_OPT_* the client sent
	Reply   uint32 // NBD_REP_ERR_* the server answered
	Message string // server's message, possibly empty
}

func (e *OptionError) Error() string {
	s := fmt.Sprintf("option %s: server replied %s", optName(e.Option), repName(e.Reply))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is lets callers branch on the few replies that call for different action.
func (e *OptionError) Is(target error) bool {
	switch target {
	case ErrUnsupported:
		return e.Reply == repErrUnsup
	case ErrUnknownExport:
		return e.Reply == repErrUnknown
	}
	return false
}

// ServerError is an error the server reported for one command. The
// connection stays usable (unless Errno is ESHUTDOWN).
type ServerError struct {
	Command uint16 // NBD_CMD_*
	Errno   uint32 // NBD error value; same numbering as Linux errno
	Message string // server's message, possibly empty
	Offset  int64  // where the error happened, or -1 if not reported
}

func (e *ServerError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s failed: %s", cmdName(e.Command), e.errno())
	if e.Offset >= 0 {
		fmt.Fprintf(&b, " at offset %d", e.Offset)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

// Unwrap exposes the error as a syscall.Errno so callers can test
// errors.Is(err, syscall.EIO).
func (e *ServerError) Unwrap() error { return e.errno() }

// errno maps the protocol's error values to the platform's. The protocol
// says values it does not define must be treated as EINVAL.
func (e *ServerError) errno() syscall.Errno {
	switch e.Errno {
	case 1:
		return syscall.EPERM
	case 5:
		return syscall.EIO
	case 12:
		return syscall.ENOMEM
	case 22:
		return syscall.EINVAL
	case 28:
		return syscall.ENOSPC
	case 75:
		return syscall.EOVERFLOW
	case 95:
		return syscall.ENOTSUP
	case 108:
		return syscall.ESHUTDOWN
	}
	return syscall.EINVAL
}

// sanitizeMessage makes a server-supplied string safe to embed in an error:
// bounded, valid UTF-8, and without control characters that could forge log
// lines.
func sanitizeMessage(b []byte) string {
	if len(b) > maxString {
		b = b[:maxString]
	}
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
