package field

import (
	"errors"
	"fmt"
)

// Error is a setting that is wrong: Path names it, Err says why.
type Error struct {
	Path string
	Err  error
}

func (e *Error) Error() string {
	if e.Path == "" {
		return e.Err.Error()
	}
	return e.Path + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf is an *Error at path.
func Errorf(path, format string, a ...any) error {
	return &Error{Path: path, Err: fmt.Errorf(format, a...)}
}

// Wrap is err at path; nil if err is nil.
func Wrap(path string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Path: path, Err: err}
}

// Under puts err, a setting of the entry at prefix, under that prefix:
// the paths of nested settings join with sep ("." for a table, ": " after
// a named entry). An error that names no setting is about the entry
// itself. Nil if err is nil.
func Under(prefix, sep string, err error) error {
	if err == nil {
		return nil
	}
	if fe, ok := errors.AsType[*Error](err); ok && fe.Path != "" {
		return &Error{Path: prefix + sep + fe.Path, Err: fe.Err}
	}
	return &Error{Path: prefix, Err: err}
}
