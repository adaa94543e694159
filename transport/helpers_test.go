package transport

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drsync/drsync/tlsid"
)

// identity makes a self-signed identity in a temporary directory.
func identity(t *testing.T, name string) tlsid.Identity {
	t.Helper()
	id, err := tlsid.WriteIdentity(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func pin(ids ...tlsid.Identity) tlsid.Trust {
	var tr tlsid.Trust
	for _, id := range ids {
		tr.Fingerprints = append(tr.Fingerprints, id.Fingerprint)
	}
	return tr
}

// testCA issues identities for CA-based trust.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test dr ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: cert, key: key}
}

func (ca testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func (ca testCA) issue(t *testing.T, name string) tlsid.Identity {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tlsid.Identity{
		Cert:        tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		Leaf:        leaf,
		Fingerprint: tlsid.Fingerprint(leaf),
	}
}

// fastOptions keep failing tests short.
func fastOptions() Options {
	return Options{IdleTimeout: 2 * time.Second, KeepAlive: 300 * time.Millisecond, HandshakeTimeout: 2 * time.Second}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustListen(t *testing.T, conf *tls.Config, opts Options) *Listener {
	t.Helper()
	l, err := Listen("127.0.0.1:0", conf, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// mutedConn is a packet conn that can be made to drop everything, as if the
// host behind it vanished without a word. It deliberately hides the
// *net.UDPConn methods quic-go would otherwise use to bypass it.
type mutedConn struct {
	uc    *net.UDPConn
	muted atomic.Bool
}

func (m *mutedConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := m.uc.ReadFrom(p)
		if err != nil || !m.muted.Load() {
			return n, addr, err
		}
	}
}

func (m *mutedConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if m.muted.Load() {
		return len(p), nil
	}
	return m.uc.WriteTo(p, addr)
}

func (m *mutedConn) Close() error                       { return m.uc.Close() }
func (m *mutedConn) LocalAddr() net.Addr                { return m.uc.LocalAddr() }
func (m *mutedConn) SetDeadline(t time.Time) error      { return m.uc.SetDeadline(t) }
func (m *mutedConn) SetReadDeadline(t time.Time) error  { return m.uc.SetReadDeadline(t) }
func (m *mutedConn) SetWriteDeadline(t time.Time) error { return m.uc.SetWriteDeadline(t) }
