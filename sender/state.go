package sender

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// ErrCorruptState marks a sender state file that cannot be read. The sender
// then knows nothing of the replica and does a full comparison pass.
var ErrCorruptState = errors.New("corrupt sender state")

// Index is what the sender believes the replica holds: the block table of
// every target as of a committed epoch.
type Index struct {
	Epoch   uint64
	StateID uint64
	Tables  map[string]*blockhash.Table // by TableKey
}

// TableKey names a target's table.
func TableKey(kind vmspec.TargetKind, name string) string {
	return kind.String() + "/" + name
}

func splitKey(k string) (vmspec.TargetKind, string) {
	switch {
	case strings.HasPrefix(k, "ram/"):
		return vmspec.KindRAM, k[4:]
	case strings.HasPrefix(k, "blob/"):
		return vmspec.KindBlob, k[5:]
	}
	return vmspec.KindDisk, k[5:]
}

// ComputeStateID derives the state identity the receiver's manifest will
// have for these tables at this epoch.
func (x *Index) ComputeStateID() uint64 {
	var ts []blockhash.TargetState
	for k, t := range x.Tables {
		kind, name := splitKey(k)
		ts = append(ts, blockhash.TargetState{Kind: uint8(kind), Name: name, Size: t.Size, BlockSize: t.BlockSize, Digest: t.Digest()})
	}
	return blockhash.StateID(x.Epoch, ts)
}

// State file layout, big-endian:
//
//	"DRSNDST1" | epoch u64 | stateID u64 | n u16 | n x (keyLen u8 | key | table file) | xxh64 u64
//
// The trailing xxhash covers everything before it.
const stateMagic = "DRSNDST1"

// MarshalIndex encodes x.
func MarshalIndex(x *Index) []byte {
	keys := make([]string, 0, len(x.Tables))
	n := len(stateMagic) + 8 + 8 + 2 + 8
	for k, t := range x.Tables {
		keys = append(keys, k)
		n += 1 + len(k) + t.MarshalLen()
	}
	sort.Strings(keys)
	// Sized once: the tables are most of it, and it is written every epoch.
	b := append(make([]byte, 0, n), stateMagic...)
	b = binary.BigEndian.AppendUint64(b, x.Epoch)
	b = binary.BigEndian.AppendUint64(b, x.StateID)
	b = binary.BigEndian.AppendUint16(b, uint16(len(keys)))
	for _, k := range keys {
		b = append(b, byte(len(k)))
		b = append(b, k...)
		b = x.Tables[k].AppendMarshal(b)
	}
	return binary.BigEndian.AppendUint64(b, xxhash.Sum64(b))
}

// UnmarshalIndex decodes a state file.
func UnmarshalIndex(b []byte) (*Index, error) {
	bad := func(what string) error { return fmt.Errorf("sender state: %s: %w", what, ErrCorruptState) }
	if len(b) < len(stateMagic)+8+8+2+8 || string(b[:8]) != stateMagic {
		return nil, bad("bad header")
	}
	body, sum := b[:len(b)-8], binary.BigEndian.Uint64(b[len(b)-8:])
	if xxhash.Sum64(body) != sum {
		return nil, bad("checksum mismatch")
	}
	x := &Index{Epoch: binary.BigEndian.Uint64(body[8:]), StateID: binary.BigEndian.Uint64(body[16:]), Tables: map[string]*blockhash.Table{}}
	n := int(binary.BigEndian.Uint16(body[24:]))
	if n > wire.MaxTargets {
		return nil, bad("too many targets")
	}
	r := bytes.NewReader(body[26:])
	for range n {
		kl, err := r.ReadByte()
		if err != nil {
			return nil, bad("truncated")
		}
		k := make([]byte, kl)
		if _, err := io.ReadFull(r, k); err != nil {
			return nil, bad("truncated key")
		}
		if !bytes.HasPrefix(k, []byte("disk/")) && !bytes.HasPrefix(k, []byte("ram/")) {
			return nil, bad("bad key")
		}
		t, err := blockhash.Read(r)
		if err != nil {
			return nil, bad(err.Error())
		}
		x.Tables[string(k)] = t
	}
	if r.Len() != 0 {
		return nil, bad("trailing bytes")
	}
	return x, nil
}

// Store keeps the sender's index of one VM in a directory: "committed" is
// what the replica is known to hold, "pending" what it will hold once the
// epoch in flight commits. Writing pending before sending the commit is what
// lets a restarted sender know the replica's content whichever way the
// commit went.
type Store struct {
	FS  vfs.FS
	Dir string
}

func (s Store) load(name string) (*Index, error) {
	f, err := s.FS.Open(path.Join(s.Dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open sender state: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(bufio.NewReader(io.LimitReader(f, 4<<30)))
	if err != nil {
		return nil, fmt.Errorf("read sender state: %w", err)
	}
	return UnmarshalIndex(b)
}

// Load returns the committed and pending indexes (nil if absent). A corrupt
// file is reported as absent together with its error, so the caller can log
// it and fall back to a full pass.
func (s Store) Load() (committed, pending *Index, err error) {
	committed, err1 := s.load("committed")
	pending, err2 := s.load("pending")
	if err1 != nil {
		committed = nil
	}
	if err2 != nil {
		pending = nil
	}
	return committed, pending, errors.Join(err1, err2)
}

func (s Store) write(name string, x *Index) error {
	if err := vfs.MkdirAllDurable(s.FS, s.Dir, 0o750); err != nil {
		return fmt.Errorf("sender state dir: %w", err)
	}
	if err := vfs.WriteFileDurable(s.FS, path.Join(s.Dir, name), MarshalIndex(x), 0o600); err != nil {
		return fmt.Errorf("write sender state %s: %w", name, err)
	}
	return nil
}

// SavePending durably records the index the replica will have after the
// epoch in flight.
func (s Store) SavePending(x *Index) error { return s.write("pending", x) }

// PromotePending makes the pending index the committed one by renaming
// its file: the epoch it describes committed, and its tables are not
// written a second time (they are 8 bytes per page of every target).
func (s Store) PromotePending() error {
	if err := s.FS.Rename(path.Join(s.Dir, "pending"), path.Join(s.Dir, "committed")); err != nil {
		return fmt.Errorf("promote pending sender state: %w", err)
	}
	if err := s.FS.SyncDir(s.Dir); err != nil {
		return fmt.Errorf("promote pending sender state: %w", err)
	}
	return nil
}

// Promote makes x the committed index and drops any pending one.
func (s Store) Promote(x *Index) error {
	if err := s.write("committed", x); err != nil {
		return err
	}
	if err := s.FS.Remove(path.Join(s.Dir, "pending")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove pending sender state: %w", err)
	}
	return s.FS.SyncDir(s.Dir)
}
