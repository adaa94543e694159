package blockhash

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
)

// ErrCorrupt marks a table file that cannot be parsed.
var ErrCorrupt = errors.New("corrupt block hash table")

// HeaderLen is the size of the table file header; entry i is stored at
// HeaderLen + 8*i.
const HeaderLen = 28

var magic = [8]byte{'D', 'R', 'B', 'H', 'T', '1', 0, 0}

// Table holds one hash per block of a target of Size bytes. A table that
// has left the code that built it is shared, not copied (the sender's
// index, the plan against it, livecut's last cut hold the same tables: a
// copy per epoch cost a 4 GiB guest 8 MiB of copying each), so it is
// never changed in place: change a Clone.
type Table struct {
	BlockSize int
	Size      int64
	Hashes    []uint64
}

// Blocks returns ceil(size/blockSize).
func Blocks(size int64, blockSize int) int64 {
	return (size + int64(blockSize) - 1) / int64(blockSize)
}

// NewZero returns the table of a target that reads as zeros everywhere,
// which is what a freshly created sparse replica image is.
func NewZero(size int64, blockSize int) *Table {
	t := &Table{BlockSize: blockSize, Size: size, Hashes: make([]uint64, Blocks(size, blockSize))}
	for i := range t.Hashes {
		t.Hashes[i] = ZeroHash(t.BlockLen(int64(i)))
	}
	return t
}

// Of returns the table of b at blockSize, hashing every block.
func Of(b []byte, blockSize int) *Table {
	t := &Table{BlockSize: blockSize, Size: int64(len(b)), Hashes: make([]uint64, Blocks(int64(len(b)), blockSize))}
	for i := range t.Hashes {
		off := int64(i) * int64(blockSize)
		t.Hashes[i] = Hash(b[off : off+int64(t.BlockLen(int64(i)))])
	}
	return t
}

// BlockLen is the length of block i (the last one may be short).
func (t *Table) BlockLen(i int64) int {
	off := i * int64(t.BlockSize)
	if rem := t.Size - off; rem < int64(t.BlockSize) {
		return int(rem)
	}
	return t.BlockSize
}

// Resize grows or shrinks the table to size; whole new blocks read as
// zeros. A short last block that changes length keeps its old hash, which
// (being a hash over fewer bytes) does not match its new content, so the
// sender treats it as changed and sends it again.
func (t *Table) Resize(size int64) {
	if size == t.Size {
		return
	}
	old := t.Size
	n := Blocks(size, t.BlockSize)
	hs := make([]uint64, n)
	copy(hs, t.Hashes)
	t.Hashes, t.Size = hs, size
	for i := Blocks(old, t.BlockSize); i < n; i++ {
		t.Hashes[i] = ZeroHash(t.BlockLen(i))
	}
}

// Digest is the content digest of the target the table describes.
func (t *Table) Digest() uint64 {
	h := xxhash.New()
	var b [12]byte
	binary.BigEndian.PutUint32(b[:4], uint32(t.BlockSize))
	binary.BigEndian.PutUint64(b[4:], uint64(t.Size))
	h.Write(b[:])
	buf := make([]byte, 0, 8*1024)
	for _, v := range t.Hashes {
		buf = binary.BigEndian.AppendUint64(buf, v)
		if len(buf) == cap(buf) {
			h.Write(buf)
			buf = buf[:0]
		}
	}
	h.Write(buf)
	return h.Sum64()
}

// Clone returns a deep copy.
func (t *Table) Clone() *Table {
	c := *t
	c.Hashes = append([]uint64(nil), t.Hashes...)
	return &c
}

// Equal reports whether two tables describe the same content.
func (t *Table) Equal(o *Table) bool {
	if t.BlockSize != o.BlockSize || t.Size != o.Size || len(t.Hashes) != len(o.Hashes) {
		return false
	}
	for i := range t.Hashes {
		if t.Hashes[i] != o.Hashes[i] {
			return false
		}
	}
	return true
}

// Hash is the block hash function.
func Hash(b []byte) uint64 { return xxhash.Sum64(b) }

var (
	zeroHashes sync.Map // int -> uint64
	// Block sizes are powers of two, and ZeroHash runs once per table
	// entry (a million per 4 GiB of RAM, every epoch): their hashes sit in
	// an array, not behind sync.Map's lookup.
	zeroPow2    [40]atomic.Uint64
	zeroPow2Set [40]atomic.Bool
)

// ZeroHash is Hash of n zero bytes, cached per length.
func ZeroHash(n int) uint64 {
	if n > 0 && n&(n-1) == 0 {
		i := bits.TrailingZeros(uint(n))
		if i < len(zeroPow2) {
			if zeroPow2Set[i].Load() {
				return zeroPow2[i].Load()
			}
			v := xxhash.Sum64(make([]byte, n))
			zeroPow2[i].Store(v)
			zeroPow2Set[i].Store(true)
			return v
		}
	}
	if v, ok := zeroHashes.Load(n); ok {
		return v.(uint64)
	}
	v := xxhash.Sum64(make([]byte, n))
	zeroHashes.Store(n, v)
	return v
}

// IsZero reports whether b is all zeros.
func IsZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Header returns the file header of t.
func (t *Table) Header() []byte {
	b := make([]byte, 0, HeaderLen)
	b = append(b, magic[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(t.BlockSize))
	b = binary.BigEndian.AppendUint64(b, uint64(t.Size))
	return binary.BigEndian.AppendUint64(b, uint64(len(t.Hashes)))
}

// Marshal returns the whole table file.
func (t *Table) Marshal() []byte { return t.AppendMarshal(make([]byte, 0, t.MarshalLen())) }

// MarshalLen is the length of the table file: 8 bytes per block of a
// disk or page of RAM, written with every epoch, so callers size once.
func (t *Table) MarshalLen() int { return HeaderLen + 8*len(t.Hashes) }

// AppendMarshal appends the table file to b.
func (t *Table) AppendMarshal(b []byte) []byte {
	b = append(b, t.Header()...)
	for _, v := range t.Hashes {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return b
}

// EntryBytes encodes the entries [i, i+n) for an in-place update at
// HeaderLen+8*i.
func (t *Table) EntryBytes(i, n int64) []byte {
	b := make([]byte, 0, 8*n)
	for _, v := range t.Hashes[i : i+n] {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return b
}

// MaxEntries bounds what Read accepts: 2^28 entries is a 16 TiB disk at
// 64 KiB blocks, 2 GiB of table.
const MaxEntries = 1 << 28

// Read parses a table file.
func Read(r io.Reader) (*Table, error) {
	var h [HeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, fmt.Errorf("read table header: %w (%w)", err, ErrCorrupt)
	}
	if [8]byte(h[:8]) != magic {
		return nil, fmt.Errorf("bad table magic %q: %w", h[:8], ErrCorrupt)
	}
	bs := binary.BigEndian.Uint32(h[8:12])
	size := binary.BigEndian.Uint64(h[12:20])
	count := binary.BigEndian.Uint64(h[20:28])
	if bs < 512 || bs > 4<<20 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("table block size %d: %w", bs, ErrCorrupt)
	}
	if size > 1<<60 || count != uint64(Blocks(int64(size), int(bs))) || count > MaxEntries {
		return nil, fmt.Errorf("table size %d with %d entries at block size %d: %w", size, count, bs, ErrCorrupt)
	}
	// Sized up to 8 MiB of entries (a 4 GiB RAM block, a 64 GiB disk at
	// 64 KiB blocks) and grown beyond as read, so a lying count cannot
	// allocate much more than the file has.
	t := &Table{BlockSize: int(bs), Size: int64(size), Hashes: make([]uint64, 0, min(count, 1<<20))}
	buf := make([]byte, 64*1024)
	for uint64(len(t.Hashes)) < count {
		want := min(int((count-uint64(len(t.Hashes)))*8), len(buf))
		if _, err := io.ReadFull(r, buf[:want]); err != nil {
			return nil, fmt.Errorf("read table entries: %w (%w)", err, ErrCorrupt)
		}
		for i := 0; i < want; i += 8 {
			t.Hashes = append(t.Hashes, binary.BigEndian.Uint64(buf[i:]))
		}
	}
	return t, nil
}

// TargetState is what StateID needs to know of one target.
type TargetState struct {
	Kind      uint8
	Name      string
	Size      int64
	BlockSize int
	Digest    uint64
}

// StateID identifies a replica's committed content: epoch plus every
// target's digest, order-independent (targets are sorted by kind and name).
func StateID(epoch uint64, targets []TargetState) uint64 {
	ts := append([]TargetState(nil), targets...)
	sort.Slice(ts, func(i, j int) bool {
		if ts[i].Kind != ts[j].Kind {
			return ts[i].Kind < ts[j].Kind
		}
		return ts[i].Name < ts[j].Name
	})
	h := xxhash.New()
	var b []byte
	b = binary.BigEndian.AppendUint64(b, epoch)
	for _, t := range ts {
		b = append(b, t.Kind, byte(len(t.Name)))
		b = append(b, t.Name...)
		b = binary.BigEndian.AppendUint64(b, uint64(t.Size))
		b = binary.BigEndian.AppendUint32(b, uint32(t.BlockSize))
		b = binary.BigEndian.AppendUint64(b, t.Digest)
	}
	h.Write(b)
	return h.Sum64()
}
