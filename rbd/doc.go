// Package rbd is drsync's own small cgo layer over Debian's librados and
// librbd: connecting to a Ceph cluster as a cephx user, RBD images (create,
// open at the head or at a snapshot, resize, read and write at offsets,
// zero, flush), snapshots (create, list, remove, protect, unprotect, roll
// back), copy-on-write clones, the image's exclusive lock, and whole RADOS
// objects (replaced atomically). It owns the mapping of librados/librbd
// return codes to Go errors: every failure is an *Error naming the
// operation and the image, unwrapping to its errno, and matching the
// markers ErrNoSpace (ENOSPC, EDQUOT: the pool is full or over its quota)
// and ErrLocked (another live client holds the image's lock).
//
// It must not know about replicas, epochs or manifests: the RBD replica
// store builds those on the Pool and Image interfaces (api.go), which are
// also where tests put a fault-injecting wrapper.
//
// # Build tag
//
// The cgo code (ceph.go) is built only with the build tag "ceph" (and cgo);
// without it Connect returns ErrUnsupported and Supported is false. A build
// tag rather than linking librbd always, or loading it with dlopen, because
// the default build and `make demo` must work on a host with neither the
// Ceph libraries nor their headers, and a binary linked against librbd
// does not start without it; dlopen would mean declaring librbd's structs
// and enums by hand instead of taking them from its headers, so a mismatch
// with the installed library would be found at run time, not at build
// time. `make test` builds and tests with the tag (GOFLAGS=-tags=ceph, which
// also reaches the drsync binary the end-to-end tests build); a receiver
// on Ceph is built with `go build -tags ceph ./cmd/drsync`.
//
// A pool is opened with "full try" set: a write to a pool that is full or
// over its quota is refused with ErrNoSpace instead of being held by the
// client until space appears, so a receiver says its storage is full
// rather than hanging. Writes go through librbd's cache; Flush is where a
// refused write is reported if the write itself was accepted into it.
package rbd
