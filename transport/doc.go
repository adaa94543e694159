// Package transport owns drsync's network connections: QUIC with mutual TLS
// between the two sites, idle detection and keepalives, and the translation
// of QUIC failures into errors the rest of drsync can act on (an untrusted
// peer, an idle timeout, a close by the other side).
//
// A connection carries one bidirectional stream of drsync frames. QUIC only
// announces a stream to the peer once data is written on it, so the side
// that opens the stream must write first (the drsync sender opens it and
// writes its Hello); AcceptStream on the other side returns only then.
//
// Dial returns only after the server has accepted our certificate: the
// listener confirms each admitted connection on a one-byte unidirectional
// stream of its own, because in TLS 1.3 a client completes its handshake
// before the server has checked the client's certificate.
//
// A dialed connection sends a small datagram every second (ResetProbe), so
// that a listener restarted with the same reset key always has a packet to
// answer with a stateless reset, even while the client only waits.
//
// The package knows nothing of frames, epochs, VMs or storage; it moves
// bytes. Which certificates are trusted is decided by the tls.Config it is
// given (see package tlsid); it only insists that the peer is verified.
package transport
