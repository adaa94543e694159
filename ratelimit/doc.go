// Package ratelimit caps the rate at which bytes are written: a token
// bucket (Bucket, pure: time is an argument), a Limiter that waits on it
// and may be shared by several connections, and Conn, a decorator that
// puts any io.ReadWriteCloser under a Limiter. The sender's bandwidth cap
// is a Limiter around its connections, so no transport or protocol code
// knows about it.
//
// It must not know what the bytes are, where they go, or the clock of
// the process: the Limiter is handed its clock and its way of sleeping.
//
// # Bucket
//
// The bucket holds up to Burst bytes of credit and refills at Rate bytes
// per second. Reserve takes n bytes at once, letting the credit go
// negative, and returns how long the caller must wait for the credit to
// be back at zero: writes of any size are allowed, each paid for before
// it goes, so that over any span the bytes let through are at most
// Burst + Rate·span.
package ratelimit
