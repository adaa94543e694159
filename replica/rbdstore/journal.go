package rbdstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/drsync/drsync/wire"
)

// The journal's objects each start with an 8-byte magic and the staging's
// nonce; see doc.go for the whole layout.
const (
	magicHeader = "DRSJHDR1"
	magicChunk  = "DRSJCHK1"
	magicCommit = "DRSJCMT1"
	prefixLen   = 16
)

// chunkSize is how much a chunk of staged items grows to before it is
// written even without a Sync: well under the OSDs' largest write.
const chunkSize = 4 << 20

var errJournal = errors.New("journal object damaged")

func objPrefix(magic string, nonce uint64, extra ...uint64) []byte {
	b := append([]byte(magic), binary.BigEndian.AppendUint64(nil, nonce)...)
	for _, v := range extra {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return b
}

// encode appends frames to the object prefix b.
func encode(b []byte, frames ...wire.Frame) ([]byte, error) {
	buf := bytes.NewBuffer(b)
	enc := wire.NewEncoder(buf, wire.EncoderOptions{})
	for _, f := range frames {
		if err := enc.Encode(f); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// parse checks an object's magic, returns its nonce, n extra words and
// its frames.
func parse(b []byte, magic string, n int) (nonce uint64, extra []uint64, frames []wire.Frame, err error) {
	if len(b) < prefixLen+8*n || string(b[:8]) != magic {
		return 0, nil, nil, fmt.Errorf("%d bytes without the %s header: %w", len(b), magic, errJournal)
	}
	nonce = binary.BigEndian.Uint64(b[8:])
	for i := range n {
		extra = append(extra, binary.BigEndian.Uint64(b[prefixLen+8*i:]))
	}
	dec := wire.NewDecoder(bytes.NewReader(b[prefixLen+8*n:]), wire.DecoderOptions{})
	for {
		f, err := dec.Decode()
		if err == io.EOF {
			return nonce, extra, frames, nil
		}
		if err != nil {
			return 0, nil, nil, fmt.Errorf("%w: %w", errJournal, err)
		}
		frames = append(frames, f)
	}
}

// loc is where an item sits in the journal: its chunk and its index there.
func loc(chunk, index int) int64 { return int64(chunk)<<32 | int64(index) }

func splitLoc(l int64) (chunk, index int) { return int(l >> 32), int(l & 0xffffffff) }
