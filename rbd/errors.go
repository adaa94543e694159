package rbd

import (
	"errors"
	"fmt"
	"syscall"
)

var (
	// ErrUnsupported is returned by every call of a binary built without
	// the ceph build tag.
	ErrUnsupported = errors.New("rbd: this drsync was built without Ceph support (build tag ceph)")
	// ErrNoSpace is a write refused because the pool is full or over its
	// quota (ENOSPC, EDQUOT).
	ErrNoSpace = errors.New("the Ceph pool is full or over its quota")
	// ErrLocked is an image's exclusive lock held by a live client.
	ErrLocked = errors.New("the RBD image is locked by another client")
)

// Error is a failed librados/librbd call: what was done, to what, and the
// errno the library returned. It unwraps to the errno (so errors.Is(err,
// fs.ErrNotExist) holds for ENOENT) and matches ErrNoSpace and ErrLocked
// for the errnos that mean them.
type Error struct {
	Op    string
	Name  string
	Errno syscall.Errno
}

func (e *Error) Error() string {
	if e.Name == "" {
		return fmt.Sprintf("rbd: %s: %v", e.Op, e.Errno)
	}
	return fmt.Sprintf("rbd: %s %s: %v", e.Op, e.Name, e.Errno)
}

func (e *Error) Unwrap() error { return e.Errno }

// Is maps the errnos callers branch on to the marker errors.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNoSpace:
		return e.Errno == syscall.ENOSPC || e.Errno == syscall.EDQUOT
	case ErrLocked:
		return e.Errno == syscall.EBUSY || e.Errno == syscall.EROFS
	}
	return false
}

// errnoErr turns a negative return code into an *Error, nil for >= 0.
func errnoErr(op, name string, ret int) error {
	if ret >= 0 {
		return nil
	}
	return &Error{Op: op, Name: name, Errno: syscall.Errno(-ret)}
}

// Config says how to reach a cluster.
type Config struct {
	// ConfFile is the ceph.conf naming the monitors ("" reads Ceph's
	// default search path).
	ConfFile string
	// Client is the cephx user without its "client." prefix ("" is
	// "admin").
	Client string
	// Keyring overrides the keyring ceph.conf names ("" keeps it).
	Keyring string
}

// Validate checks the fields that can be checked without the cluster.
func (c Config) Validate() error {
	for _, r := range c.Client {
		if r <= ' ' || r == 0x7f {
			return fmt.Errorf("rbd: cephx user %q has a blank or control character", c.Client)
		}
	}
	if len(c.Client) > 6 && c.Client[:7] == "client." {
		return fmt.Errorf("rbd: cephx user %q: give it without the \"client.\" prefix", c.Client)
	}
	return nil
}

// Snap is an image snapshot.
type Snap struct {
	ID   uint64
	Name string
	Size uint64
	// Protected: clones may be made of it, and it cannot be removed
	// until it is unprotected (which its clones prevent).
	Protected bool
}

// Locker is a holder of an advisory lock.
type Locker struct {
	Client string // "client.4123"
	Cookie string
	Addr   string
}
