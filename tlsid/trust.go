package tlsid

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"
)

// ErrUntrusted marks a peer certificate that the local Trust does not accept.
var ErrUntrusted = errors.New("peer certificate not trusted")

// UntrustedError reports a rejected peer certificate. Its message carries the
// presented fingerprint so an operator can pin it if the peer is legitimate.
type UntrustedError struct {
	Fingerprint string // of the presented leaf; empty if none was presented
	CommonName  string
	Reason      string
}

func (e *UntrustedError) Error() string {
	if e.Fingerprint == "" {
		return "peer presented no certificate (" + e.Reason + ")"
	}
	name := ""
	if e.CommonName != "" {
		name = fmt.Sprintf(" (CN %q)", e.CommonName)
	}
	return fmt.Sprintf("peer certificate %s%s is not trusted (%s)", e.Fingerprint, name, e.Reason)
}

// Is makes errors.Is(err, ErrUntrusted) hold for every UntrustedError.
func (e *UntrustedError) Is(target error) bool { return target == ErrUntrusted }

// Peer is the verified identity of the other side of a connection.
type Peer struct {
	Fingerprint string
	CommonName  string
}

// PeerOf describes a certificate as a Peer.
func PeerOf(cert *x509.Certificate) Peer {
	return Peer{Fingerprint: Fingerprint(cert), CommonName: cert.Subject.CommonName}
}

// Trust is what this side accepts from the other: certificates pinned by
// fingerprint, certificates chaining to one of CAs, or both.
type Trust struct {
	Fingerprints []string
	CAs          *x509.CertPool
}

// Validate checks that t trusts something and that every pin parses.
func (t Trust) Validate() error {
	if len(t.Fingerprints) == 0 && t.CAs == nil {
		return errors.New("trust: no pinned fingerprints and no CA configured; every peer would be refused")
	}
	for _, fp := range t.Fingerprints {
		if _, err := ParseFingerprint(fp); err != nil {
			return fmt.Errorf("trust: %w", err)
		}
	}
	return nil
}

// LoadCAFile adds the PEM certificates in path to t.CAs, creating the pool
// if needed. A file without any certificate is an error.
func (t *Trust) LoadCAFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("trust: read CA file: %w", err)
	}
	pool := t.CAs
	if pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(data) {
		return fmt.Errorf("trust: CA file %s holds no PEM certificate", path)
	}
	t.CAs = pool
	return nil
}

// Verify decides whether the chain presented by a peer (leaf first, DER) is
// trusted: the leaf's fingerprint is pinned, or the leaf chains to one of the
// CAs for client or server use. Either way the leaf must be within its
// validity period. A refusal is an *UntrustedError.
func (t Trust) Verify(rawCerts [][]byte) (Peer, error) {
	return t.verifyAt(rawCerts, time.Now())
}

func (t Trust) verifyAt(rawCerts [][]byte, now time.Time) (Peer, error) {
	if len(rawCerts) == 0 {
		return Peer{}, &UntrustedError{Reason: "a certificate is required"}
	}
	leaf, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return Peer{}, &UntrustedError{Reason: "unparsable certificate: " + err.Error()}
	}
	peer := PeerOf(leaf)
	refuse := func(reason string) (Peer, error) {
		return Peer{}, &UntrustedError{Fingerprint: peer.Fingerprint, CommonName: peer.CommonName, Reason: reason}
	}
	if err := t.Validate(); err != nil {
		return refuse("local trust configuration is invalid: " + err.Error())
	}
	if err := checkValidity(leaf, now); err != nil {
		return refuse(err.Error())
	}
	for _, fp := range t.Fingerprints {
		if pin, _ := ParseFingerprint(fp); pin == peer.Fingerprint {
			return peer, nil
		}
	}
	if t.CAs != nil {
		inter := x509.NewCertPool()
		for _, raw := range rawCerts[1:] {
			c, err := x509.ParseCertificate(raw)
			if err != nil {
				return refuse("unparsable intermediate certificate: " + err.Error())
			}
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots:         t.CAs,
			Intermediates: inter,
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		})
		if err == nil {
			return peer, nil
		}
		return refuse("not pinned and not signed by a trusted CA: " + err.Error())
	}
	return refuse("not pinned and not signed by a trusted CA")
}
