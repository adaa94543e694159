// Package protocol is the receiver's side of the drsync protocol on one
// connection, without IO: which frame may come next (Hello, then epochs
// of EpochBegin, items and EpochCommit, or a TableRequest between them),
// the version negotiated at Hello, and when enough has been appended that
// progress must be made durable and acknowledged. The receiver's Handle
// drives it and does the IO; what an epoch must satisfy is the replica's
// staging logic.
//
// It must not know connections, files, replicas or authorization.
package protocol
