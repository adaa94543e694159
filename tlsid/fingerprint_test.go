package tlsid

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

func TestFingerprint(t *testing.T) {
	c := makeCert(t, certSpec{cn: "x"}, nil)
	sum := sha256.Sum256(c.cert.Raw)
	if got, want := Fingerprint(c.cert), "sha256:"+hex.EncodeToString(sum[:]); got != want {
		t.Errorf("Fingerprint = %s, want %s", got, want)
	}
}

func TestParseFingerprint(t *testing.T) {
	const hexFP = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	canon := "sha256:" + hexFP
	var colons []string
	for i := 0; i < len(hexFP); i += 2 {
		colons = append(colons, hexFP[i:i+2])
	}
	withColons := strings.Join(colons, ":")

	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: canon, want: canon},
		{in: hexFP, want: canon},
		{in: strings.ToUpper(canon), want: canon},
		{in: "SHA256:" + strings.ToUpper(withColons), want: canon},
		{in: withColons, want: canon},
		{in: "  " + canon + "\n", want: canon},
		{in: "", wantErr: true},
		{in: "sha256:", wantErr: true},
		{in: canon[:len(canon)-2], wantErr: true},
		{in: canon + "00", wantErr: true},
		{in: "sha256:" + strings.Repeat("zz", 32), wantErr: true},
		{in: "sha1:" + hexFP, wantErr: true},
		{in: "md5:" + hexFP[:32], wantErr: true},
	}
	for _, tc := range tests {
		got, err := ParseFingerprint(tc.in)
		if tc.wantErr {
			if err == nil {
				t.Errorf("ParseFingerprint(%q) = %q, want error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseFingerprint(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
