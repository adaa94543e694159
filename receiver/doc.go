// Package receiver owns the DR side of a connection: the handshake
// (version negotiation, per-VM authorization of the verified peer, the
// replica's durable position in the Welcome), which frames may come when,
// how often durable progress is acknowledged, and which connection may
// write a VM (one at a time; a reconnecting sender takes over its own).
//
// The ordering rules are a pure state machine (package receiver/protocol); what an epoch
// must satisfy is the replica package's staging logic; Handle is the IO
// loop joining them over any io.ReadWriteCloser, so tests join a sender and
// a receiver with a pipe.
//
// A connection holds its VM's replica lock only while an epoch is in
// flight, and lets go of it while its sender is silent mid-epoch, so a
// failover can take a replica whose sender died without waiting for the
// connection to time out. Between epochs the replica stays open but
// released (replica.Handle.Release): its block tables stay in memory, so
// an epoch reads and hashes only the tables it changes, and the next
// epoch takes it back unless someone wrote it meanwhile, when it is
// opened again. A connection so keeps its VM's tables in memory while it
// lasts, 8 bytes per block (2 MiB per GiB of guest RAM).
//
// Items are decoded into one buffer (wire.DecoderOptions.Borrow) and
// handed to the replica, which must be done with an item's data when
// Append returns (replica.Handle): no item is copied out of it first.
//
// It must not know about QUIC, TLS, certificates or configuration files:
// the caller passes the verified Peer and an Authorize function.
package receiver
