// Package e2e holds end-to-end tests and benchmarks that run the real
// drsync binary (built from cmd/drsync) as separate sender and receiver
// processes over loopback QUIC, with real image files, qemu-img and
// qemu-nbd. It has no non-test code of its own.
package e2e
