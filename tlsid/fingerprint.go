package tlsid

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
)

const fingerprintPrefix = "sha256:"

// Fingerprint identifies a certificate: "sha256:" followed by the lowercase
// hex SHA-256 of its DER encoding. This is the form operators pin in config.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return fingerprintPrefix + hex.EncodeToString(sum[:])
}

// ParseFingerprint normalises a fingerprint as an operator may paste it:
// with or without the "sha256:" prefix, in any case, with or without colons
// between bytes (as openssl prints them). The result is in Fingerprint's form.
func ParseFingerprint(s string) (string, error) {
	orig := s
	s = strings.ToLower(strings.TrimSpace(s))
	s = strings.TrimPrefix(s, fingerprintPrefix)
	s = strings.ReplaceAll(s, ":", "")
	if len(s) != 2*sha256.Size {
		return "", fmt.Errorf("fingerprint %q: want %d hex digits of SHA-256, got %d", orig, 2*sha256.Size, len(s))
	}
	if _, err := hex.DecodeString(s); err != nil {
		return "", fmt.Errorf("fingerprint %q: not hexadecimal", orig)
	}
	return fingerprintPrefix + s, nil
}
