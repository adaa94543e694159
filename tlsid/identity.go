package tlsid

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/drsync/drsync/vfs"
)

// Validity of generated certificates. NotBefore is backdated so that a peer
// whose clock runs a little behind still accepts a freshly made certificate.
const (
	certLifetime = 10 * 365 * 24 * time.Hour
	clockSkew    = time.Hour
)

// ErrExpired marks a certificate outside its validity period.
var ErrExpired = errors.New("certificate outside its validity period")

// Identity is a loaded key pair: what this side presents in the handshake.
type Identity struct {
	Cert        tls.Certificate
	Leaf        *x509.Certificate
	Fingerprint string
}

// Generate creates an ECDSA P-256 key and a self-signed certificate naming
// commonName (as CN and DNS SAN), valid for ten years, usable both as a TLS
// client and a TLS server. Both are returned PEM-encoded.
func Generate(commonName string) (certPEM, keyPEM []byte, err error) {
	if commonName == "" {
		return nil, nil, errors.New("generate identity: empty name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate identity %q: key: %w", commonName, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("generate identity %q: %w", commonName, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		DNSNames:              []string{commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("generate identity %q: certificate: %w", commonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("generate identity %q: encode key: %w", commonName, err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, nil
}

// randomSerial returns a positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// WriteIdentity generates an identity named name and writes it as
// dir/name.crt (0644) and dir/name.key (0600). It never overwrites: if either
// file exists it fails and leaves both untouched.
func WriteIdentity(dir, name string) (Identity, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return Identity{}, fmt.Errorf("write identity: invalid name %q (must be a plain file name)", name)
	}
	certFile := filepath.Join(dir, name+".crt")
	keyFile := filepath.Join(dir, name+".key")
	for _, f := range []string{certFile, keyFile} {
		if _, err := os.Lstat(f); err == nil {
			return Identity{}, fmt.Errorf("write identity: %s already exists; refusing to overwrite an existing identity", f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return Identity{}, fmt.Errorf("write identity: %w", err)
		}
	}
	certPEM, keyPEM, err := Generate(name)
	if err != nil {
		return Identity{}, err
	}
	// The key goes first: a stray certificate without its key is harmless,
	// the opposite leaves a secret nobody knows about.
	if err := writeNew(keyFile, keyPEM, 0o600); err != nil {
		return Identity{}, err
	}
	if err := writeNew(certFile, certPEM, 0o644); err != nil {
		_ = os.Remove(keyFile)
		return Identity{}, err
	}
	return parseIdentity(certPEM, keyPEM, certFile)
}

// writeNew creates path with the given mode, durably (a key must survive
// the power loss that follows keygen), and never over an existing file.
func writeNew(path string, data []byte, mode fs.FileMode) error {
	err := vfs.CreateFileDurable(vfs.Default, path, data, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("write identity: %s already exists; refusing to overwrite an existing identity", path)
	}
	if err != nil {
		return fmt.Errorf("write identity %s: %w", path, err)
	}
	return nil
}

// LoadIdentity reads a PEM certificate and its private key. It fails if a
// file is missing, the key does not belong to the certificate, or the
// certificate is not valid now.
func LoadIdentity(certFile, keyFile string) (Identity, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return Identity{}, fmt.Errorf("load identity: read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return Identity{}, fmt.Errorf("load identity: read private key: %w", err)
	}
	return parseIdentity(certPEM, keyPEM, certFile)
}

func parseIdentity(certPEM, keyPEM []byte, certFile string) (Identity, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return Identity{}, fmt.Errorf("load identity %s: certificate and private key do not form a usable pair: %w", certFile, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return Identity{}, fmt.Errorf("load identity %s: parse certificate: %w", certFile, err)
		}
		pair.Leaf = leaf
	}
	if err := checkValidity(leaf, time.Now()); err != nil {
		return Identity{}, fmt.Errorf("load identity %s: %w", certFile, err)
	}
	if _, ok := pair.PrivateKey.(crypto.Signer); !ok {
		return Identity{}, fmt.Errorf("load identity %s: private key cannot sign", certFile)
	}
	return Identity{Cert: pair, Leaf: leaf, Fingerprint: Fingerprint(leaf)}, nil
}

func checkValidity(cert *x509.Certificate, now time.Time) error {
	if now.Before(cert.NotBefore) {
		return fmt.Errorf("%w: certificate %s is not valid before %s", ErrExpired, Fingerprint(cert), cert.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(cert.NotAfter) {
		return fmt.Errorf("%w: certificate %s expired at %s", ErrExpired, Fingerprint(cert), cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}
