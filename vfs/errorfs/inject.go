package errorfs

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Counter is an Injector that fails nothing and counts the operations it
// is asked about. The zero value is ready to use.
type Counter struct {
	n atomic.Int64
}

func (c *Counter) MaybeError(Op) error {
	c.n.Add(1)
	return nil
}

// Count returns the number of operations seen so far.
func (c *Counter) Count() int { return int(c.n.Load()) }

// Index is an Injector that fails operations by their position in the
// sequence it sees, counting from 0. Positions are only reproducible if the
// scenario issues its operations in a deterministic order.
type Index struct {
	n      int
	err    error
	sticky bool
	seen   atomic.Int64
}

// OnIndex fails the n-th operation (counting from 0) with err, or with
// ErrInjected if err is nil, and nothing else.
func OnIndex(n int, err error) *Index {
	return &Index{n: n, err: orInjected(err)}
}

// FromIndex fails the n-th operation and every one after it, like a disk
// that died.
func FromIndex(n int, err error) *Index {
	return &Index{n: n, err: orInjected(err), sticky: true}
}

func orInjected(err error) error {
	if err == nil {
		return ErrInjected
	}
	return err
}

func (x *Index) MaybeError(Op) error {
	i := int(x.seen.Add(1) - 1)
	if i == x.n || (x.sticky && i > x.n) {
		return x.err
	}
	return nil
}

// Fired reports whether the n-th operation has happened, i.e. whether an
// error was injected. A crash-injection loop uses it to check that the
// scenario reached the failure point.
func (x *Index) Fired() bool { return int(x.seen.Load()) > x.n }

// Count returns the number of operations seen so far.
func (x *Index) Count() int { return int(x.seen.Load()) }

// Filter selects operations.
type Filter func(Op) bool

// Ops selects operations of the given kinds.
func Ops(kinds ...OpKind) Filter {
	kinds = slices.Clone(kinds)
	return func(op Op) bool { return slices.Contains(kinds, op.Kind) }
}

// PathMatch selects operations whose path (either path, for a rename)
// contains substr.
func PathMatch(substr string) Filter {
	return func(op Op) bool {
		return strings.Contains(op.Path, substr) ||
			(op.Kind == OpRename && strings.Contains(op.NewPath, substr))
	}
}

// Mutations selects the operations that can change stored state (see
// OpKind.Mutates); crash-injection loops usually restrict themselves to
// these.
func Mutations() Filter {
	return func(op Op) bool { return op.Kind.Mutates() }
}

// And selects operations that both f and g select.
func (f Filter) And(g Filter) Filter {
	return func(op Op) bool { return f(op) && g(op) }
}

// When restricts inj to the operations f selects: inj is not even asked
// about the others, so an Index or Counter behind When counts only
// selected operations.
func When(f Filter, inj Injector) Injector {
	return InjectorFunc(func(op Op) error {
		if !f(op) {
			return nil
		}
		return inj.MaybeError(op)
	})
}

// Any asks injs in order and returns the first error; injectors after it
// are not asked about that operation.
func Any(injs ...Injector) Injector {
	injs = slices.Clone(injs)
	return InjectorFunc(func(op Op) error {
		for _, inj := range injs {
			if err := inj.MaybeError(op); err != nil {
				return err
			}
		}
		return nil
	})
}

// ENOSPCAfter simulates a device holding limit bytes: a Write or WriteAt
// that would bring the total of bytes written through it above limit fails
// with syscall.ENOSPC (and is not counted); smaller writes may still fit.
// Overwrites count as new bytes, since the injector cannot see what is
// already stored.
func ENOSPCAfter(limit int64) Injector {
	var mu sync.Mutex
	var written int64
	return InjectorFunc(func(op Op) error {
		if op.Kind != OpWrite && op.Kind != OpWriteAt {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if written+op.Len > limit {
			return syscall.ENOSPC
		}
		written += op.Len
		return nil
	})
}
