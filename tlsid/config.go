package tlsid

import (
	"crypto/tls"
	"slices"

	"github.com/drsync/drsync/wire"
)

// ServerTLS returns the configuration of the listening side: TLS 1.3 only,
// ALPN drsync/1, a client certificate required and checked against trust.
func ServerTLS(id Identity, trust Trust) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		NextProtos:   []string{wire.ALPN},
		Certificates: []tls.Certificate{id.Cert},
		// RequireAnyClientCert makes crypto/tls demand a certificate but skip
		// its own chain verification, which self-signed peers would fail;
		// VerifyConnection below is the actual check.
		ClientAuth: tls.RequireAnyClientCert,
		// Resumption would let a client skip presenting its certificate;
		// connections are long-lived, so the saved round trip is worthless.
		SessionTicketsDisabled: true,
		VerifyConnection:       verifyConnection(trust),
	}
}

// ClientTLS returns the configuration of the dialling side: TLS 1.3 only,
// ALPN drsync/1, presenting id and checking the server against trust.
func ClientTLS(id Identity, trust Trust) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		NextProtos:   []string{wire.ALPN},
		Certificates: []tls.Certificate{id.Cert},
		// SECURITY: InsecureSkipVerify only turns off crypto/tls's web-PKI
		// verification (system roots + host name), which cannot work with
		// self-signed, pinned certificates. The server is authenticated by
		// VerifyConnection below, which crypto/tls still runs and which
		// fails the handshake unless the server's certificate is pinned or
		// CA-signed per trust. Never remove VerifyConnection or set it to
		// something that accepts everything: the connection would then
		// accept any server at all.
		InsecureSkipVerify: true,
		VerifyConnection:   verifyConnection(trust),
	}
}

// verifyConnection is used rather than VerifyPeerCertificate because it
// also runs on resumed sessions.
func verifyConnection(trust Trust) func(tls.ConnectionState) error {
	// Later edits to the caller's slice must not change a live config.
	trust.Fingerprints = slices.Clone(trust.Fingerprints)
	return func(cs tls.ConnectionState) error {
		raw := make([][]byte, len(cs.PeerCertificates))
		for i, c := range cs.PeerCertificates {
			raw[i] = c.Raw
		}
		_, err := trust.Verify(raw)
		return err
	}
}
