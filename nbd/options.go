package nbd

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxMetaContexts bounds how many contexts one client may ask for.
const maxMetaContexts = 64

// Options configures a connection.
type Options struct {
	// Export is the export name; "" selects the server's default export.
	Export string
	// MetaContexts are the metadata contexts to select, such as
	// ContextBaseAllocation or DirtyBitmapContext("b0"). The handshake
	// fails with ErrMetaContextUnavailable if the server does not select
	// every one of them.
	MetaContexts []string
	// ListMetaContexts asks the server which contexts it offers for the
	// export; see Client.AvailableMetaContexts.
	ListMetaContexts bool
}

// Validate reports whether the options can be sent as they are.
func (o Options) Validate() error {
	if err := checkString("export name", o.Export); err != nil {
		return fmt.Errorf("nbd: options: %w", err)
	}
	if len(o.MetaContexts) > maxMetaContexts {
		return fmt.Errorf("nbd: options: %d metadata contexts, at most %d allowed", len(o.MetaContexts), maxMetaContexts)
	}
	seen := make(map[string]bool, len(o.MetaContexts))
	for _, m := range o.MetaContexts {
		if m == "" {
			return errors.New("nbd: options: empty metadata context name")
		}
		if err := checkString("metadata context", m); err != nil {
			return fmt.Errorf("nbd: options: %w", err)
		}
		// The protocol requires every context name to start with a namespace.
		if i := strings.IndexByte(m, ':'); i <= 0 {
			return fmt.Errorf("nbd: options: metadata context %q lacks a namespace prefix such as \"base:\"", m)
		}
		if seen[m] {
			return fmt.Errorf("nbd: options: metadata context %q listed twice", m)
		}
		seen[m] = true
	}
	return nil
}

func checkString(what, s string) error {
	switch {
	case len(s) > maxString:
		return fmt.Errorf("%s is %d bytes, at most %d allowed", what, len(s), maxString)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s %q is not UTF-8", what, s)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%s %q contains NUL", what, s)
	}
	return nil
}
