package tlsid

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTrustValidate(t *testing.T) {
	fp := Fingerprint(makeCert(t, certSpec{cn: "p"}, nil).cert)
	tests := []struct {
		name  string
		trust Trust
		ok    bool
	}{
		{"empty", Trust{}, false},
		{"pin", Trust{Fingerprints: []string{fp}}, true},
		{"pin without prefix", Trust{Fingerprints: []string{strings.TrimPrefix(fp, "sha256:")}}, true},
		{"ca only", Trust{CAs: x509.NewCertPool()}, true},
		{"bad pin", Trust{Fingerprints: []string{fp, "sha256:abcd"}}, false},
		{"bad pin with ca", Trust{Fingerprints: []string{"nope"}, CAs: x509.NewCertPool()}, false},
	}
	for _, tc := range tests {
		if err := tc.trust.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestTrustVerify(t *testing.T) {
	now := time.Now()
	ca := makeCert(t, certSpec{cn: "dr-ca", ca: true, notAfter: now.Add(24 * time.Hour)}, nil)
	inter := makeCert(t, certSpec{cn: "dr-inter", ca: true}, &ca)
	otherCA := makeCert(t, certSpec{cn: "other-ca", ca: true}, nil)

	pinned := makeCert(t, certSpec{cn: "pinned"}, nil)
	stranger := makeCert(t, certSpec{cn: "stranger"}, nil)
	signed := makeCert(t, certSpec{cn: "site-b"}, &ca)
	viaInter := makeCert(t, certSpec{cn: "site-c"}, &inter)
	signedByOther := makeCert(t, certSpec{cn: "site-x"}, &otherCA)
	codeSigning := makeCert(t, certSpec{cn: "signer", eku: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}, &ca)
	serverOnly := makeCert(t, certSpec{cn: "srv", eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, &ca)
	expiredPinned := makeCert(t, certSpec{cn: "old", notBefore: now.Add(-2 * time.Hour), notAfter: now.Add(-time.Hour)}, nil)
	expiredSigned := makeCert(t, certSpec{cn: "old-signed", notBefore: now.Add(-2 * time.Hour), notAfter: now.Add(-time.Hour)}, &ca)

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	pins := []string{
		// Pins as an operator might paste them.
		strings.ToUpper(strings.TrimPrefix(Fingerprint(pinned.cert), "sha256:")),
		Fingerprint(expiredPinned.cert),
	}
	pinOnly := Trust{Fingerprints: pins}
	caOnly := Trust{CAs: pool}
	both := Trust{Fingerprints: pins, CAs: pool}

	tests := []struct {
		name   string
		trust  Trust
		chain  [][]byte
		ok     bool
		reason string
	}{
		{"pinned", pinOnly, chain(pinned), true, ""},
		{"pinned with ca configured", both, chain(pinned), true, ""},
		{"unpinned", pinOnly, chain(stranger), false, "not pinned and not signed by a trusted CA"},
		{"ca signed", caOnly, chain(signed), true, ""},
		{"ca signed with pins configured", both, chain(signed), true, ""},
		{"ca signed but only pins", pinOnly, chain(signed), false, "not pinned"},
		{"via intermediate", caOnly, chain(viaInter, inter), true, ""},
		{"intermediate missing", caOnly, chain(viaInter), false, "not signed by a trusted CA"},
		{"other ca", both, chain(signedByOther), false, "not signed by a trusted CA"},
		{"self-signed stranger vs ca", caOnly, chain(stranger), false, "not signed by a trusted CA"},
		{"wrong key usage", caOnly, chain(codeSigning), false, "not signed by a trusted CA"},
		{"server usage only", caOnly, chain(serverOnly), true, ""},
		{"expired pinned", pinOnly, chain(expiredPinned), false, "expired at"},
		{"expired signed", caOnly, chain(expiredSigned), false, "expired at"},
		{"no certificate", both, nil, false, "a certificate is required"},
		{"garbage", both, [][]byte{[]byte("junk")}, false, "unparsable"},
		{"invalid trust", Trust{}, chain(pinned), false, "trust configuration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			peer, err := tc.trust.Verify(tc.chain)
			if tc.ok {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				leaf, _ := x509.ParseCertificate(tc.chain[0])
				if peer != PeerOf(leaf) {
					t.Errorf("peer = %+v, want %+v", peer, PeerOf(leaf))
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify accepted, peer %+v", peer)
			}
			if !errors.Is(err, ErrUntrusted) {
				t.Errorf("error %v is not ErrUntrusted", err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("error %q does not say %q", err, tc.reason)
			}
			var ue *UntrustedError
			if !errors.As(err, &ue) {
				t.Fatalf("error %T is not *UntrustedError", err)
			}
			if len(tc.chain) > 0 {
				leaf, perr := x509.ParseCertificate(tc.chain[0])
				if perr == nil {
					fp := Fingerprint(leaf)
					if ue.Fingerprint != fp || !strings.Contains(err.Error(), fp) {
						t.Errorf("error %q does not name the presented fingerprint %s", err, fp)
					}
				}
			}
		})
	}
}

func TestUntrustedMessage(t *testing.T) {
	stranger := makeCert(t, certSpec{cn: "stranger"}, nil)
	_, err := Trust{Fingerprints: []string{Fingerprint(makeCert(t, certSpec{cn: "p"}, nil).cert)}}.Verify(chain(stranger))
	want := "peer certificate " + Fingerprint(stranger.cert) + ` (CN "stranger") is not trusted (not pinned and not signed by a trusted CA)`
	if err == nil || err.Error() != want {
		t.Errorf("error = %v\nwant    %s", err, want)
	}
}

func TestLoadCAFile(t *testing.T) {
	dir := t.TempDir()
	ca := makeCert(t, certSpec{cn: "ca", ca: true}, nil)
	leaf := makeCert(t, certSpec{cn: "leaf"}, &ca)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.certPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	var tr Trust
	if err := tr.LoadCAFile(caFile); err != nil {
		t.Fatal(err)
	}
	if err := tr.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Verify(chain(leaf)); err != nil {
		t.Errorf("leaf of loaded CA refused: %v", err)
	}

	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("nothing here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tr.LoadCAFile(empty); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("LoadCAFile(empty) = %v", err)
	}
	if err := tr.LoadCAFile(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("LoadCAFile(missing) succeeded")
	}
}
