// Package serve is the receiver's daemon around package receiver: it
// locks the storage directory against a second receiver, finishes what a
// crash left half-applied, listens for QUIC connections with mutual TLS,
// and serves each admitted connection's stream, telling a striped stream
// (package stripe) from a plain one by its first bytes. A refused sender
// gets a grace period to read the Error frame that says why before its
// connection closes. It keeps each replica's status file (STATUS.json),
// the hot set of recently written pages (package warmset) and the
// receiver's metrics.
//
// Package receiver must not know about QUIC or TLS, which is why this
// loop lives apart from it. This package in turn must not know the
// configuration file format (TOML), command-line flags, exit codes or
// how anything is shown on a terminal: the command builds Options.
package serve
