// Package udprelay is a user-space UDP relay for link-failure tests: it sits
// between a QUIC client and server on this machine and can cut the link,
// delay, drop at random or rate-limit datagrams while traffic flows.
//
// It refuses to work off the machine: the listen and upstream addresses must
// be loopback, and it only ever sends to the upstream address and to
// loopback clients that sent to it. It knows nothing of QUIC or drsync; it
// moves opaque datagrams.
package udprelay
