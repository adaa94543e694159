// Package tlsid owns the identities and the trust decisions of drsync peers:
// generating a key pair with a self-signed certificate, loading one from
// disk, fingerprinting certificates, and deciding whether a certificate
// presented by the other site is acceptable (pinned by fingerprint, or signed
// by a configured CA). It also builds the mutual-TLS configurations used on
// every connection.
//
// It does no networking and knows nothing of QUIC, streams, frames, VMs or
// replication; the transport package applies these configurations.
package tlsid
