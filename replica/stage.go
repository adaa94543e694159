package replica

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// ErrProtocol marks an epoch that breaks the protocol's rules (order,
// bounds, targets). The frame is rejected and nothing of it is applied.
var ErrProtocol = errors.New("protocol violation")

// ErrDigest marks an epoch whose digest or resulting state differs from what
// the sender computed: something was lost or altered on the way.
var ErrDigest = errors.New("digest mismatch")

// stagedItem is what the stage remembers of an item: its summary, where it
// sits in the journal, and the hashes of the blocks it writes.
type stagedItem struct {
	wire.Summary
	off    int64
	hashes []uint64 // per block, data items only
}

type stagedTarget struct {
	wire.Target
	base *TargetEntry // nil for a target new in this epoch
}

// stage is the pure state of one epoch being staged: it checks each frame
// against the epoch's rules and the replica's committed manifest, and keeps
// what the commit needs. It does no IO; time and files are the caller's.
type stage struct {
	base     *Manifest
	begin    wire.EpochBegin
	targets  map[uint16]*stagedTarget
	items    []stagedItem
	bytes    uint64
	digest   *wire.EpochDigest
	devSeen  bool
	devGot   uint64
	devTotal uint64
	devHash  *xxhash.Digest
	commit   *wire.EpochCommit
	// The bounds of the epoch's items and bytes: for a closed epoch what
	// its EpochBegin announced, for an open one (wire.EpochBegin.Open)
	// what its targets can take.
	itemCap, byteCap uint64
}

func protoErr(format string, a ...any) error {
	return fmt.Errorf(format+": %w", append(a, ErrProtocol)...)
}

// newStage validates b as the next epoch after base.
func newStage(base *Manifest, b *wire.EpochBegin, maxSize uint64) (*stage, error) {
	if b.Epoch != base.Epoch+1 {
		return nil, protoErr("EpochBegin: epoch %d, replica is at %d and expects %d", b.Epoch, base.Epoch, base.Epoch+1)
	}
	if b.StartSeq != 0 {
		return nil, protoErr("EpochBegin: epoch %d resumes at item %d but nothing of it is staged", b.Epoch, b.StartSeq)
	}
	s := &stage{base: base, begin: *b, targets: map[uint16]*stagedTarget{}, digest: wire.NewEpochDigest(b.Epoch), devHash: xxhash.New()}
	s.begin.Targets = append([]wire.Target(nil), b.Targets...)
	seen := map[string]bool{}
	for i := range s.begin.Targets {
		t := s.begin.Targets[i]
		key := kindName(t.Kind) + "/" + t.Name
		if _, dup := s.targets[t.ID]; dup || seen[key] {
			return nil, protoErr("EpochBegin: target %s listed twice", key)
		}
		seen[key] = true
		if t.Size > maxSize || blockhash.Blocks(int64(min(t.Size, 1<<62)), int(t.BlockSize)) > blockhash.MaxEntries {
			return nil, protoErr("EpochBegin: target %s of %d bytes at %d-byte blocks exceeds this receiver's limit of %d bytes and %d blocks", key, t.Size, t.BlockSize, maxSize, blockhash.MaxEntries)
		}
		st := &stagedTarget{Target: t, base: base.Find(t.Kind, t.Name)}
		if st.base != nil {
			if st.base.BlockSize != int(t.BlockSize) {
				return nil, protoErr("EpochBegin: target %s block size %d, replica has %d", key, t.BlockSize, st.base.BlockSize)
			}
			if int64(t.Size) < st.base.Size {
				return nil, protoErr("EpochBegin: target %s shrinks from %d to %d bytes; shrinking a replicated target is not supported", key, st.base.Size, t.Size)
			}
		}
		if t.Kind == vmspec.KindRAM && t.BlockSize != vmspec.PageSize {
			return nil, protoErr("EpochBegin: RAM target %s block size %d", key, t.BlockSize)
		}
		s.targets[t.ID] = st
	}
	for _, e := range base.Targets {
		if !seen[e.Kind+"/"+e.Name] {
			return nil, protoErr("EpochBegin: epoch %d leaves out %s %q that the replica holds; removing a target is not supported", b.Epoch, e.Kind, e.Name)
		}
	}
	// An epoch writes each block of its targets at most once, plus the
	// device state in chunks: announcing more items or bytes than that is
	// no real epoch, and is refused before anything is staged.
	var blocks, size uint64
	for _, t := range s.begin.Targets {
		blocks += uint64(blockhash.Blocks(int64(t.Size), int(t.BlockSize)))
		size += t.Size
	}
	maxItems, maxBytes := blocks+maxDeviceStateItems, size+maxDeviceStateItems*wire.MaxData
	if b.Items > maxItems {
		return nil, protoErr("EpochBegin: epoch %d announces %d items; its targets hold %d blocks, so at most %d items", b.Epoch, b.Items, blocks, maxItems)
	}
	if b.Bytes > maxBytes {
		return nil, protoErr("EpochBegin: epoch %d announces %d payload bytes; its targets hold %d, so at most %d", b.Epoch, b.Bytes, size, maxBytes)
	}
	s.itemCap, s.byteCap = b.Items, b.Bytes
	if b.Open {
		s.itemCap, s.byteCap = maxItems, maxBytes
	}
	return s, nil
}

// maxDeviceStateItems bounds the device-state chunks of an epoch: 4096
// chunks of wire.MaxData is 16 GiB, far more than any machine's device
// state (video memory and ROMs are RAM targets, not device state).
const maxDeviceStateItems = 4096

// resume checks that b continues this staged epoch where it stands.
func (s *stage) resume(b *wire.EpochBegin) error {
	// An open epoch's counts grow as its sender plans; a closed one's are
	// part of what is resumed.
	counts := b.Open || b.Items == s.begin.Items && b.Bytes == s.begin.Bytes
	if b.Epoch != s.begin.Epoch || b.Plan != s.stagedPlan(len(s.items)) || b.Open != s.begin.Open || !counts {
		return protoErr("EpochBegin: resume of epoch %d plan %016x does not match staged epoch %d plan %016x", b.Epoch, b.Plan, s.begin.Epoch, s.begin.Plan)
	}
	if b.StartSeq != uint64(len(s.items)) {
		return protoErr("EpochBegin: resume at item %d, %d items are durable", b.StartSeq, len(s.items))
	}
	if !sameGroup(b.Group, s.begin.Group) {
		return protoErr("EpochBegin: resume of epoch %d changes its group tag", b.Epoch)
	}
	if len(b.Targets) != len(s.begin.Targets) {
		return protoErr("EpochBegin: resume changes the target list")
	}
	for i, t := range b.Targets {
		if t != s.begin.Targets[i] {
			return protoErr("EpochBegin: resume changes target %d", t.ID)
		}
	}
	return nil
}

// capWord says, in an error, what set itemCap and byteCap: announced
// (as the caller words it) or what the targets can take.
func (s *stage) capWord(announced string) string {
	if s.begin.Open {
		return "the targets can take"
	}
	return announced
}

// stagedPlan is the plan identity a resume of this epoch after its first
// n items must carry: the EpochBegin's for a closed epoch, and for an
// open one (whose identity could not cover items not yet planned) the
// digest of those n items (wire.OpenPlanID).
func (s *stage) stagedPlan(n int) uint64 {
	if !s.begin.Open {
		return s.begin.Plan
	}
	sums := make([]wire.Summary, n)
	for i, it := range s.items[:n] {
		sums[i] = it.Summary
	}
	return wire.OpenPlanID(s.begin.Epoch, s.begin.Group, sums)
}

func sameGroup(a, b *vmspec.GroupCut) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Group == b.Group && a.Cut == b.Cut && slices.Equal(a.Members, b.Members)
}

func (s *stage) target(id uint16, kind vmspec.TargetKind, what string) (*stagedTarget, error) {
	t, ok := s.targets[id]
	if !ok {
		return nil, protoErr("%s: unknown target %d", what, id)
	}
	if t.Kind != kind {
		return nil, protoErr("%s: target %d (%s) is a %s", what, id, t.Name, kindName(t.Kind))
	}
	return t, nil
}

// checkRange enforces that [off, off+n) is inside t and made of whole blocks
// (the last block of the target may be short).
func checkRange(what string, t *stagedTarget, off, n uint64) error {
	bs := uint64(t.BlockSize)
	if n == 0 || off >= t.Size || n > t.Size-off {
		return protoErr("%s: range [%d,+%d) outside target %s of %d bytes", what, off, n, t.Name, t.Size)
	}
	if off%bs != 0 || (n%bs != 0 && off+n != t.Size) {
		return protoErr("%s: range [%d,+%d) of target %s is not whole %d-byte blocks", what, off, n, t.Name, bs)
	}
	return nil
}

func blockHashes(data []byte, bs int) []uint64 {
	hs := make([]uint64, 0, (len(data)+bs-1)/bs)
	for len(data) > 0 {
		n := min(bs, len(data))
		hs = append(hs, blockhash.Hash(data[:n]))
		data = data[n:]
	}
	return hs
}

// item stages the next item, found at journal offset off.
func (s *stage) item(it wire.Item, off int64) error {
	if s.commit != nil {
		return protoErr("%s after EpochCommit", it.Type())
	}
	if seq := it.ItemSeq(); seq != uint64(len(s.items)) {
		return protoErr("%s: item %d out of order, expected %d", it.Type(), seq, len(s.items))
	}
	if uint64(len(s.items)) >= s.itemCap {
		return protoErr("%s: item %d beyond the %d items %s", it.Type(), it.ItemSeq(), s.itemCap, s.capWord("announced"))
	}
	var hashes []uint64
	data := wire.DataOf(it)
	switch f := it.(type) {
	case *wire.DiskExtent:
		// A blob's data travels as a disk's does (it is never a page's
		// source, though: PageRef names disks only).
		kind := vmspec.KindDisk
		if t, ok := s.targets[f.Target]; ok && t.Kind == vmspec.KindBlob {
			kind = vmspec.KindBlob
		}
		t, err := s.target(f.Target, kind, "DiskExtent")
		if err != nil {
			return err
		}
		if err := checkRange("DiskExtent", t, f.Offset, uint64(len(f.Data))); err != nil {
			return err
		}
		hashes = blockHashes(f.Data, int(t.BlockSize))
	case *wire.MemRun:
		t, err := s.target(f.Target, vmspec.KindRAM, "MemRun")
		if err != nil {
			return err
		}
		if f.Page > t.Size/vmspec.PageSize {
			return protoErr("MemRun: page %d outside target %s", f.Page, t.Name)
		}
		if err := checkRange("MemRun", t, f.Page*vmspec.PageSize, uint64(len(f.Data))); err != nil {
			return err
		}
		hashes = blockHashes(f.Data, int(t.BlockSize))
	case *wire.ZeroRun:
		t, ok := s.targets[f.Target]
		if !ok {
			return protoErr("ZeroRun: unknown target %d", f.Target)
		}
		if err := checkRange("ZeroRun", t, f.Offset, f.Length); err != nil {
			return err
		}
	case *wire.PageRef:
		t, err := s.target(f.Target, vmspec.KindRAM, "PageRef")
		if err != nil {
			return err
		}
		if f.Page > t.Size/vmspec.PageSize || uint64(f.Count) > t.Size/vmspec.PageSize {
			return protoErr("PageRef: pages [%d,+%d) outside target %s", f.Page, f.Count, t.Name)
		}
		if err := checkRange("PageRef", t, f.Page*vmspec.PageSize, uint64(f.Count)*vmspec.PageSize); err != nil {
			return err
		}
		var src *stagedTarget
		var srcOff uint64
		switch f.Source {
		case wire.RefDisk:
			if src, err = s.target(f.SrcTarget, vmspec.KindDisk, "PageRef source"); err != nil {
				return err
			}
			srcOff = f.SrcOffset
			if srcOff%vmspec.PageSize != 0 {
				return protoErr("PageRef: source offset %d not page aligned", srcOff)
			}
		case wire.RefPage:
			if src, err = s.target(f.SrcTarget, vmspec.KindRAM, "PageRef source"); err != nil {
				return err
			}
			if f.SrcOffset > src.Size/vmspec.PageSize {
				return protoErr("PageRef: source page %d outside target %s", f.SrcOffset, src.Name)
			}
			srcOff = f.SrcOffset * vmspec.PageSize
		default:
			return protoErr("PageRef: source kind %d", f.Source)
		}
		n := uint64(f.Count) * vmspec.PageSize
		if srcOff >= src.Size || n > src.Size-srcOff {
			return protoErr("PageRef: source range [%d,+%d) outside target %s", srcOff, n, src.Name)
		}
	case *wire.DeviceState:
		if s.devSeen && f.Total != s.devTotal {
			return protoErr("DeviceState: total %d changed from %d", f.Total, s.devTotal)
		}
		if f.Offset != s.devGot {
			return protoErr("DeviceState: chunk at %d, expected %d", f.Offset, s.devGot)
		}
	default:
		return protoErr("%s is not an epoch item", it.Type())
	}
	dh := uint64(0)
	if data != nil {
		dh = xxhash.Sum64(data)
	}
	sum := wire.Summarize(it, dh)
	if nb := s.bytes + uint64(len(data)); nb > s.byteCap {
		return protoErr("%s: item %d brings the epoch to %d bytes, %d %s", it.Type(), sum.Seq, nb, s.byteCap, s.capWord("were announced"))
	}

	// Every check passed: only now does the item change the stage.
	if f, ok := it.(*wire.DeviceState); ok {
		s.devSeen, s.devTotal = true, f.Total
		s.devGot += uint64(len(f.Data))
		s.devHash.Write(f.Data)
	}
	s.bytes += uint64(len(data))
	s.digest.Add(sum)
	s.items = append(s.items, stagedItem{Summary: sum, off: off, hashes: hashes})
	return nil
}

// checkCommit validates c against everything staged. It does not check the
// per-target states, which need the replica's tables (see Replica.Commit).
func (s *stage) checkCommit(c *wire.EpochCommit) error {
	if s.commit != nil {
		return protoErr("EpochCommit: epoch %d committed twice", c.Epoch)
	}
	if c.Epoch != s.begin.Epoch {
		return protoErr("EpochCommit: epoch %d, staging %d", c.Epoch, s.begin.Epoch)
	}
	if s.begin.Open && c.Items != uint64(len(s.items)) {
		return protoErr("EpochCommit: %d items committed, %d received", c.Items, len(s.items))
	}
	if !s.begin.Open && (c.Items != s.begin.Items || uint64(len(s.items)) != s.begin.Items) {
		return protoErr("EpochCommit: %d items committed, %d announced, %d received", c.Items, s.begin.Items, len(s.items))
	}
	if !s.begin.Open && s.bytes != s.begin.Bytes {
		return protoErr("EpochCommit: %d bytes received, %d announced", s.bytes, s.begin.Bytes)
	}
	if s.devSeen && s.devGot != s.devTotal {
		return protoErr("EpochCommit: device state has %d of %d bytes", s.devGot, s.devTotal)
	}
	if got := s.digest.Sum(); got != c.Digest {
		return fmt.Errorf("epoch %d digest %016x, sender computed %016x: %w", c.Epoch, got, c.Digest, ErrDigest)
	}
	seen := map[uint16]bool{}
	for _, st := range c.States {
		if _, ok := s.targets[st.Target]; !ok || seen[st.Target] {
			return protoErr("EpochCommit: state for unknown or repeated target %d", st.Target)
		}
		seen[st.Target] = true
	}
	if len(seen) != len(s.targets) {
		return protoErr("EpochCommit: states for %d of %d targets", len(seen), len(s.targets))
	}
	// A page that another reference of this epoch writes cannot be a
	// reference's source: applying references must be repeatable after a
	// crash, so no reference may read what another one writes.
	dest := map[uint16]map[uint64]bool{}
	for _, it := range s.items {
		if it.Type != wire.TypePageRef {
			continue
		}
		if dest[it.Target] == nil {
			dest[it.Target] = map[uint64]bool{}
		}
		for p := it.Offset; p < it.Offset+it.Length; p++ {
			dest[it.Target][p] = true
		}
	}
	for _, it := range s.items {
		if it.Type != wire.TypePageRef || it.Source != wire.RefPage {
			continue
		}
		for p := it.SrcOffset; p < it.SrcOffset+it.Length; p++ {
			if dest[it.SrcTarget][p] {
				return protoErr("PageRef %d: source page %d of target %d is itself written by a reference", it.Seq, p, it.SrcTarget)
			}
		}
	}
	return nil
}

// deviceStateHash is xxhash64 of the staged device-state blob.
func (s *stage) deviceStateHash() uint64 { return s.devHash.Sum64() }
