// Package receiver owns the DR side of a connection: the handshake
// (version negotiation, per-VM authorization of the verified peer, the
// replica's durable position in the Welcome), which frames may come when,
// how often durable progress is acknowledged, and which connection may
// write a VM (one at a time; a reconnecting sender takes over its own).
//
// The ordering rules are a pure state machine (session); what an epoch
// must satisfy is the replica package's staging logic; Handle is the IO
// loop joining them over any io.ReadWriteCloser, so tests join a sender and
// a receiver with a pipe.
//
// It must not know about QUIC, TLS, certificates or configuration files:
// the caller passes the verified Peer and an Authorize function.
package receiver
