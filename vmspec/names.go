package vmspec

import (
	"fmt"
	"strings"
)

// MaxVMNameLen bounds a VM name, which is also a directory name on the
// receiver.
const MaxVMNameLen = 64

// ValidVMName reports whether s may name a VM: 1 to MaxVMNameLen bytes
// matching [A-Za-z0-9][A-Za-z0-9._-]* and containing no "..". The receiver
// uses the name as a directory name, so it must never be able to escape or
// alias a directory. The error wraps ErrInvalidName.
func ValidVMName(s string) error {
	if why := VMNameProblem(s); why != "" {
		return fmt.Errorf("VM name %q: %s: %w", s, why, ErrInvalidName)
	}
	return nil
}

// ValidTargetName reports whether s may name a target (a disk or a RAM block
// id): 1 to MaxTargetNameLen bytes of printable ASCII other than space. QEMU RAM
// block ids contain '/', '@' and ':', so the rules are loose; target names
// are identifiers only and never used as paths. The error wraps
// ErrInvalidName.
func ValidTargetName(s string) error {
	if why := TargetNameProblem(s); why != "" {
		return fmt.Errorf("target name %q: %s: %w", s, why, ErrInvalidName)
	}
	return nil
}

// VMNameProblem returns why s is not a valid VM name, or "".
func VMNameProblem(s string) string {
	switch {
	case s == "":
		return "empty"
	case len(s) > MaxVMNameLen:
		return fmt.Sprintf("length %d exceeds %d", len(s), MaxVMNameLen)
	case !isAlnum(s[0]):
		return "must start with a letter or digit"
	case strings.Contains(s, ".."):
		return `contains ".."`
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Sprintf("byte %#02x at %d not allowed", c, i)
		}
	}
	return ""
}

// TargetNameProblem returns why s is not a valid target name, or "".
func TargetNameProblem(s string) string {
	if s == "" {
		return "empty"
	}
	if len(s) > MaxTargetNameLen {
		return fmt.Sprintf("length %d exceeds %d", len(s), MaxTargetNameLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e {
			return fmt.Sprintf("byte %#02x at %d not printable ASCII", c, i)
		}
	}
	return ""
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
