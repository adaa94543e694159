package vmspec

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// BlobSize is the size of every blob target: small documents (a libvirt
// domain definition) that travel as a fixed-size, mostly zero image so
// they ride the disk machinery (block tables, unchanged blocks not sent,
// zero blocks as ZeroRun, a replica never shrinks a target).
const BlobSize = 1 << 20

// BlobBlockSize is a blob target's block size.
const BlobBlockSize = 4096

// MaxBlobContent is the most a blob holds: BlobSize less its length field.
const MaxBlobContent = BlobSize - 4

// ErrBlob marks a blob image that does not hold a well-formed blob.
var ErrBlob = errors.New("malformed blob")

// EncodeBlob lays content out as a blob image of BlobSize bytes.
func EncodeBlob(content []byte) ([]byte, error) {
	if len(content) > MaxBlobContent {
		return nil, fmt.Errorf("blob of %d bytes exceeds %d: %w", len(content), MaxBlobContent, ErrBlob)
	}
	img := make([]byte, BlobSize)
	binary.BigEndian.PutUint32(img, uint32(len(content)))
	copy(img[4:], content)
	return img, nil
}

// DecodeBlob returns the content of a blob image (its first bytes are
// enough: the length field and the content).
func DecodeBlob(img []byte) ([]byte, error) {
	if len(img) < 4 {
		return nil, fmt.Errorf("blob image of %d bytes has no length: %w", len(img), ErrBlob)
	}
	n := binary.BigEndian.Uint32(img)
	if n > MaxBlobContent || int(n) > len(img)-4 {
		return nil, fmt.Errorf("blob length %d exceeds its image of %d bytes: %w", n, len(img), ErrBlob)
	}
	return img[4 : 4+n], nil
}
