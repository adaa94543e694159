package tlsid

import (
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestGenerate(t *testing.T) {
	id := generated(t, "site-a")
	leaf := id.Leaf
	if leaf.Subject.CommonName != "site-a" {
		t.Errorf("CN = %q", leaf.Subject.CommonName)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "site-a" {
		t.Errorf("DNS SANs = %v", leaf.DNSNames)
	}
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("public key is %T, want ECDSA", leaf.PublicKey)
	}
	life := leaf.NotAfter.Sub(time.Now())
	if life < 9*365*24*time.Hour || life > 11*365*24*time.Hour {
		t.Errorf("lifetime %v, want about ten years", life)
	}
	if leaf.IsCA {
		t.Error("generated identity must not be a CA")
	}
	if leaf.SerialNumber.Sign() <= 0 {
		t.Errorf("serial %v not positive", leaf.SerialNumber)
	}
	other := generated(t, "site-a")
	if other.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two generated certificates share a serial number")
	}
	if other.Fingerprint == id.Fingerprint {
		t.Error("two generated certificates share a fingerprint")
	}
	if _, _, err := Generate(""); err == nil {
		t.Error("Generate(\"\") succeeded")
	}
}

func TestWriteIdentity(t *testing.T) {
	dir := t.TempDir()
	id, err := WriteIdentity(dir, "receiver")
	if err != nil {
		t.Fatal(err)
	}
	for file, mode := range map[string]fs.FileMode{"receiver.crt": 0o644, "receiver.key": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", file, fi.Mode().Perm(), mode)
		}
	}
	loaded, err := LoadIdentity(filepath.Join(dir, "receiver.crt"), filepath.Join(dir, "receiver.key"))
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Fingerprint != id.Fingerprint || loaded.Fingerprint != Fingerprint(loaded.Leaf) {
		t.Errorf("fingerprint after reload %s, written %s", loaded.Fingerprint, id.Fingerprint)
	}

	before, _ := os.ReadFile(filepath.Join(dir, "receiver.key"))
	_, err = WriteIdentity(dir, "receiver")
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second WriteIdentity: err = %v, want refusal to overwrite", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "receiver.key"))
	if string(before) != string(after) {
		t.Error("existing key was modified")
	}

	// Only the certificate exists: still refused, and no key appears.
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, "x.crt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteIdentity(dir2, "x"); err == nil {
		t.Error("WriteIdentity over an existing .crt succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir2, "x.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("key file created despite refusal: %v", err)
	}

	for _, bad := range []string{"", "../x", "a/b", "."} {
		if _, err := WriteIdentity(dir, bad); err == nil {
			t.Errorf("WriteIdentity(%q) succeeded", bad)
		}
	}
}

func TestLoadIdentityErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := makeCert(t, certSpec{cn: "a"}, nil)
	b := makeCert(t, certSpec{cn: "b"}, nil)
	expired := makeCert(t, certSpec{cn: "old", notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-24 * time.Hour)}, nil)
	future := makeCert(t, certSpec{cn: "new", notBefore: time.Now().Add(24 * time.Hour), notAfter: time.Now().Add(48 * time.Hour)}, nil)

	aCrt, aKey := write("a.crt", a.certPEM()), write("a.key", a.keyPEM(t))
	bKey := write("b.key", b.keyPEM(t))
	oldCrt, oldKey := write("old.crt", expired.certPEM()), write("old.key", expired.keyPEM(t))
	newCrt, newKey := write("new.crt", future.certPEM()), write("new.key", future.keyPEM(t))
	garbage := write("garbage.crt", []byte("not a certificate"))

	tests := []struct {
		name      string
		crt, key  string
		is        error
		substring string
	}{
		{"ok", aCrt, aKey, nil, ""},
		{"missing cert", filepath.Join(dir, "nope.crt"), aKey, fs.ErrNotExist, "read certificate"},
		{"missing key", aCrt, filepath.Join(dir, "nope.key"), fs.ErrNotExist, "read private key"},
		{"key of another cert", aCrt, bKey, nil, "do not form a usable pair"},
		{"garbage cert", garbage, aKey, nil, "do not form a usable pair"},
		{"expired", oldCrt, oldKey, ErrExpired, "expired at"},
		{"not yet valid", newCrt, newKey, ErrExpired, "not valid before"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := LoadIdentity(tc.crt, tc.key)
			if tc.substring == "" {
				if err != nil {
					t.Fatal(err)
				}
				if id.Fingerprint != Fingerprint(a.cert) {
					t.Errorf("fingerprint %s", id.Fingerprint)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.substring) {
				t.Errorf("error %q does not mention %q", err, tc.substring)
			}
		})
	}
}

func TestFingerprintOfGenerated(t *testing.T) {
	id := generated(t, "n")
	cert, err := x509.ParseCertificate(id.Cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	fp := Fingerprint(cert)
	if fp != id.Fingerprint {
		t.Errorf("Fingerprint = %s, identity says %s", fp, id.Fingerprint)
	}
	if !strings.HasPrefix(fp, "sha256:") || len(fp) != len("sha256:")+64 || strings.ToLower(fp) != fp {
		t.Errorf("fingerprint %q not in canonical form", fp)
	}
}
