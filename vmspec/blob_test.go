package vmspec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func TestBlob(t *testing.T) {
	long := func(n uint32) []byte { b := make([]byte, 8); binary.BigEndian.PutUint32(b, n); return b }
	for _, tc := range []struct {
		name    string
		content []byte // encoded, then decoded
		image   []byte // decoded as is, if set
		err     error
	}{
		{name: "empty", content: []byte{}},
		{name: "xml", content: []byte("<domain type='qemu'><name>web-1</name></domain>")},
		{name: "largest", content: bytes.Repeat([]byte{'x'}, MaxBlobContent)},
		{name: "too large", content: bytes.Repeat([]byte{'x'}, MaxBlobContent+1), err: ErrBlob},
		{name: "no length", image: []byte{0, 0}, err: ErrBlob},
		{name: "length past the image", image: long(5), err: ErrBlob},
		{name: "length past any blob", image: long(BlobSize), err: ErrBlob},
		{name: "zero image", image: make([]byte, BlobSize), content: []byte{}},
	} {
		img := tc.image
		if img == nil {
			var err error
			img, err = EncodeBlob(tc.content)
			if !errors.Is(err, tc.err) {
				t.Errorf("%s: EncodeBlob: %v, want %v", tc.name, err, tc.err)
			}
			if err != nil {
				continue
			}
			if len(img) != BlobSize {
				t.Errorf("%s: image of %d bytes, want %d", tc.name, len(img), BlobSize)
			}
		}
		got, err := DecodeBlob(img)
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: DecodeBlob: %v, want %v", tc.name, err, tc.err)
		}
		if err == nil && !bytes.Equal(got, tc.content) {
			t.Errorf("%s: decoded %d bytes, want %d", tc.name, len(got), len(tc.content))
		}
	}
}
