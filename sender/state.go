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
	"slices"
	"sort"
	"strconv"
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
		k, problem := readTableKey(r)
		if problem != "" {
			return nil, bad(problem)
		}
		t, err := blockhash.Read(r)
		if err != nil {
			return nil, bad(err.Error())
		}
		x.Tables[k] = t
	}
	if r.Len() != 0 {
		return nil, bad("trailing bytes")
	}
	return x, nil
}

// readTableKey reads a table's key (keyLen u8 | key), as the index and
// its deltas lay it out; problem says what is wrong with it, if anything.
func readTableKey(r *bytes.Reader) (key, problem string) {
	kl, err := r.ReadByte()
	if err != nil {
		return "", "truncated"
	}
	k := make([]byte, kl)
	if _, err := io.ReadFull(r, k); err != nil {
		return "", "truncated key"
	}
	if !bytes.HasPrefix(k, []byte("disk/")) && !bytes.HasPrefix(k, []byte("ram/")) {
		return "", "bad key"
	}
	return string(k), ""
}

// Store keeps the sender's index of one VM in a directory: the committed
// index is what the replica is known to hold, "pending" what it will hold
// once the epoch in flight commits. Writing pending before sending the
// commit is what lets a restarted sender know the replica's content
// whichever way the commit went.
//
// The committed index is the file "committed" (a whole index) followed by
// the deltas "committed.<epoch>" in epoch order; pending is a whole index
// or a delta against the committed one. An epoch is recorded as a delta
// when that is smaller, so the steady state writes what the epoch changed,
// and promoting it is a rename. Once the deltas add up to a quarter of the
// whole index, or number maxDeltas, the committed index is written whole
// again and they are removed; a delta of an epoch the whole file already
// holds (a crash cut that short) is skipped when read.
type Store struct {
	FS  vfs.FS
	Dir string
}

const (
	committedName = "committed"
	pendingName   = "pending"
	deltaPrefix   = committedName + "."
	maxDeltas     = 32
)

func deltaName(epoch uint64) string { return fmt.Sprintf("%s%020d", deltaPrefix, epoch) }

// readFile is the content of name, nil if it does not exist.
func (s Store) readFile(name string) ([]byte, error) {
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
	return b, nil
}

// deltas lists the epochs of the committed deltas, ascending.
func (s Store) deltas() ([]uint64, error) {
	names, err := s.FS.List(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list sender state: %w", err)
	}
	var eps []uint64
	for _, n := range names {
		if e, err := strconv.ParseUint(strings.TrimPrefix(n, deltaPrefix), 10, 64); err == nil && strings.HasPrefix(n, deltaPrefix) {
			eps = append(eps, e)
		}
	}
	slices.Sort(eps)
	return eps, nil
}

func (s Store) loadCommitted() (*Index, error) {
	b, err := s.readFile(committedName)
	if err != nil {
		return nil, err
	}
	var x *Index
	if b != nil {
		if x, err = UnmarshalIndex(b); err != nil {
			return nil, err
		}
	}
	eps, err := s.deltas()
	if err != nil {
		return nil, err
	}
	for _, e := range eps {
		if x != nil && e <= x.Epoch {
			continue
		}
		b, err := s.readFile(deltaName(e))
		if err == nil && b == nil {
			err = fmt.Errorf("sender state delta %d vanished while read", e)
		}
		if err != nil {
			return nil, err
		}
		d, err := unmarshalDelta(b)
		if err == nil && d.epoch != e {
			err = fmt.Errorf("sender state delta file of epoch %d holds epoch %d: %w", e, d.epoch, ErrCorruptState)
		}
		if err == nil {
			x, err = d.apply(x)
		}
		if err != nil {
			return nil, err
		}
	}
	return x, nil
}

func (s Store) loadPending(committed *Index) (*Index, error) {
	b, err := s.readFile(pendingName)
	if err != nil || b == nil {
		return nil, err
	}
	if !isDelta(b) {
		return UnmarshalIndex(b)
	}
	d, err := unmarshalDelta(b)
	if err != nil {
		return nil, err
	}
	return d.apply(committed)
}

// Load returns the committed and pending indexes (nil if absent). A corrupt
// file is reported as absent together with its error, so the caller can log
// it and fall back to a full pass.
func (s Store) Load() (committed, pending *Index, err error) {
	committed, err1 := s.loadCommitted()
	if err1 != nil {
		committed = nil
	}
	pending, err2 := s.loadPending(committed)
	if err2 != nil {
		pending = nil
	}
	return committed, pending, errors.Join(err1, err2)
}

func (s Store) write(name string, b []byte) error {
	if err := vfs.MkdirAllDurable(s.FS, s.Dir, 0o750); err != nil {
		return fmt.Errorf("sender state dir: %w", err)
	}
	if err := vfs.WriteFileDurable(s.FS, path.Join(s.Dir, name), b, 0o600); err != nil {
		return fmt.Errorf("write sender state %s: %w", name, err)
	}
	return nil
}

// SavePending durably records the index the replica will have after the
// epoch in flight. committed is the store's committed index (nil if it
// has none); pending is written as a delta against it when that is
// smaller than the whole index.
func (s Store) SavePending(x, committed *Index) error {
	if committed != nil {
		d := diffIndex(committed, x)
		if whole := indexLen(x); d.entries()*8 < whole/2 {
			return s.write(pendingName, d.marshal())
		}
	}
	return s.write(pendingName, MarshalIndex(x))
}

// indexLen approximates the bytes of x as a whole file.
func indexLen(x *Index) int64 {
	var n int64
	for _, t := range x.Tables {
		n += int64(t.MarshalLen())
	}
	return n
}

// PromotePending makes the pending index, x, the committed one by renaming
// its file: the epoch it describes committed, and its tables are not
// written a second time.
func (s Store) PromotePending(x *Index) error {
	wrap := func(err error) error { return fmt.Errorf("promote pending sender state: %w", err) }
	var head [len(deltaMagic) + 4*8]byte
	f, err := s.FS.Open(path.Join(s.Dir, pendingName))
	if err != nil {
		return wrap(err)
	}
	_, err = io.ReadFull(f, head[:])
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = nil // shorter than a delta's header: a whole index's
	}
	if err = errors.Join(err, f.Close()); err != nil {
		return wrap(err)
	}
	if !isDelta(head[:]) {
		if err := s.FS.Rename(path.Join(s.Dir, pendingName), path.Join(s.Dir, committedName)); err != nil {
			return wrap(err)
		}
		return s.dropDeltas(^uint64(0))
	}
	epoch, id := binary.BigEndian.Uint64(head[len(deltaMagic)+16:]), binary.BigEndian.Uint64(head[len(deltaMagic)+24:])
	if err := s.FS.Rename(path.Join(s.Dir, pendingName), path.Join(s.Dir, deltaName(epoch))); err != nil {
		return wrap(err)
	}
	if err := s.FS.SyncDir(s.Dir); err != nil {
		return wrap(err)
	}
	if x == nil || x.Epoch != epoch || stateID(x) != id {
		return nil // not the index to write whole: the next promotion compacts
	}
	eps, err := s.deltas()
	if err != nil {
		return wrap(err)
	}
	var bytes int64
	for _, e := range eps {
		if st, err := s.FS.Stat(path.Join(s.Dir, deltaName(e))); err == nil {
			bytes += st.Size()
		}
	}
	if len(eps) < maxDeltas && bytes < indexLen(x)/4 {
		return nil
	}
	// Compact: the deltas go once the whole index is durable.
	if err := s.write(committedName, MarshalIndex(x)); err != nil {
		return err
	}
	return s.dropDeltas(x.Epoch)
}

// dropDeltas removes the committed deltas up to epoch, which the whole
// committed file holds.
func (s Store) dropDeltas(upTo uint64) error {
	eps, err := s.deltas()
	if err != nil {
		return err
	}
	for _, e := range eps {
		if e > upTo {
			continue
		}
		if err := s.FS.Remove(path.Join(s.Dir, deltaName(e))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove sender state delta: %w", err)
		}
	}
	if err := s.FS.SyncDir(s.Dir); err != nil {
		return fmt.Errorf("sender state dir: %w", err)
	}
	return nil
}

// Promote makes x the committed index, written whole, and drops any
// pending one and every delta.
func (s Store) Promote(x *Index) error {
	if err := s.write(committedName, MarshalIndex(x)); err != nil {
		return err
	}
	if err := s.FS.Remove(path.Join(s.Dir, pendingName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove pending sender state: %w", err)
	}
	return s.dropDeltas(^uint64(0))
}
