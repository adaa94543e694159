// Package replicatest checks implementations of replica.Store against the
// interface's contract: epochs commit and read back byte-exact; a power
// loss at any operation of an epoch leaves exactly the previous or the new
// epoch; a full disk is a clear storage error and never corrupts; the lock
// is exclusive and a dead holder's lock is taken; recovery points, the
// takeover mark, release and reacquire behave as the interface says.
//
// Faults are described with vfs/errorfs injectors and power loss with a
// backend's Crash, so a store that is not built on vfs.FS maps its own
// storage operations onto errorfs.Op to run the suite.
package replicatest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Backend is the storage a store under test keeps its replicas on. It
// outlives the stores opened over it, as a disk outlives processes.
type Backend interface {
	// Store returns a store over the backend's storage, keeping keepPoints
	// recovery points, whose every storage operation is first offered to
	// inj (nil: none fails). Stores over one backend share its locks.
	Store(t *testing.T, keepPoints int, inj errorfs.Injector) replica.Store
	// Crash is a power loss: whatever was not made durable is gone, and
	// so are the locks of every process that held one.
	Crash(t *testing.T)
	// Scratch returns a fresh place to export epochs into.
	Scratch(t *testing.T) string
}

// Sampler is a Backend whose every crash case is slow (a network store):
// it says how many of an epoch's n operations a crash case fails, spread
// evenly and always including the last one. Other backends fail every one
// (one in n/40 with -short).
type Sampler interface {
	CrashPoints(n int, short bool) int
}

// VM is the replica the suite writes.
const VM = "web-1"

// Run runs the conformance suite, with a fresh backend from newBackend for
// each case.
func Run(t *testing.T, newBackend func(t *testing.T) Backend) {
	t.Run("EpochsReadBack", func(t *testing.T) { epochsReadBack(t, newBackend(t)) })
	t.Run("CrashAtEveryOperation", func(t *testing.T) {
		for _, keep := range []int{0, 2} {
			t.Run(fmt.Sprintf("keep%d", keep), func(t *testing.T) { crashAtEveryOperation(t, newBackend, keep) })
		}
	})
	t.Run("DiskFull", func(t *testing.T) { diskFull(t, newBackend) })
	t.Run("Lock", func(t *testing.T) { lockExclusive(t, newBackend(t)) })
	t.Run("RecoveryPoints", func(t *testing.T) { recoveryPoints(t, newBackend(t)) })
	t.Run("RetentionInherited", func(t *testing.T) { retentionInherited(t, newBackend) })
	t.Run("GroupPoints", func(t *testing.T) {
		for _, keep := range []int{0, 1} {
			t.Run(fmt.Sprintf("keep%d", keep), func(t *testing.T) { groupPoints(t, newBackend(t), keep) })
		}
	})
	t.Run("TakeoverMark", func(t *testing.T) { takeoverMark(t, newBackend(t)) })
	t.Run("ReleaseReacquire", func(t *testing.T) { releaseReacquire(t, newBackend) })
	t.Run("ReleasedBetweenEpochs", func(t *testing.T) { releasedBetweenEpochs(t, newBackend) })
	t.Run("OpenEpochResumes", func(t *testing.T) { openEpochResumes(t, newBackend(t)) })
	t.Run("ReplacedFirstEpochLeavesNothing", func(t *testing.T) { replacedFirstEpoch(t, newBackend(t)) })
}

// openEpochResumes stages part of an open epoch (protocol 4: its counts
// come with the commit), reopens the store as a restarted receiver
// would, and resumes it: the position names the durable items by their
// digest (wire.OpenPlanID), a resume naming others is refused, and the
// epoch commits whole.
func openEpochResumes(t *testing.T, b Backend) {
	es := history(2)
	s := b.Store(t, 0, nil)
	commit(t, s, es[0])
	e := es[1]
	begin := *e.begin
	begin.Open, begin.Items, begin.Bytes = true, 1, 0
	sums := make([]wire.Summary, len(e.items))
	for i, it := range e.items {
		var dh uint64
		if d := wire.DataOf(it); d != nil {
			dh = xxhash.Sum64(d)
		}
		sums[i] = wire.Summarize(it, dh)
	}
	begin.Plan = wire.OpenPlanID(e.begin.Epoch, e.begin.Group, nil)
	h := open(t, s, replica.OpenOptions{})
	if err := h.Begin(&begin); err != nil {
		t.Fatal(err)
	}
	for _, it := range e.items[:2] {
		if err := h.Append(it); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.Sync(); err != nil {
		t.Fatal(err)
	}
	h.Close()
	h = open(t, s, replica.OpenOptions{})
	defer h.Close()
	p := h.Position()
	want := wire.OpenPlanID(e.begin.Epoch, e.begin.Group, sums[:2])
	if p.StagedEpoch != 2 || p.StagedDurable != 2 || p.StagedPlan != want {
		t.Fatalf("position %+v after reopening, want epoch 2 staged with 2 durable items named %016x", p, want)
	}
	resume := begin
	resume.StartSeq, resume.Items, resume.Plan = 2, uint64(len(e.items)), wire.OpenPlanID(e.begin.Epoch, e.begin.Group, sums[:1])
	if err := h.Begin(&resume); !errors.Is(err, replica.ErrProtocol) {
		t.Fatalf("resume naming other items: %v, want ErrProtocol", err)
	}
	resume.Plan = want
	if err := h.Begin(&resume); err != nil {
		t.Fatal(err)
	}
	for _, it := range e.items[2:] {
		if err := h.Append(it); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := h.Commit(e.commit); err != nil {
		t.Fatal(err)
	}
	if d := diffHandle(h, e.after); d != "" {
		t.Fatal(d)
	}
}

// replacedFirstEpoch stages a first epoch that writes a disk block and a
// RAM page the real first epoch leaves zero, then replaces it with the
// real one, in the same process and after a reopen: the replica must read
// as the real epoch, with nothing of the replaced one (a store may write
// a new target's image before the commit, as the file store does).
func replacedFirstEpoch(t *testing.T, b Backend) {
	e := history(1)[0]
	var blk, page uint64
	for blk = 0; blk < diskSize/diskBS && !allZero(e.after.disk[blk*diskBS:(blk+1)*diskBS]); blk++ {
	}
	for page = 0; page < ramSize/vmspec.PageSize && !allZero(e.after.ram[page*vmspec.PageSize:(page+1)*vmspec.PageSize]); page++ {
	}
	if blk == diskSize/diskBS || page == ramSize/vmspec.PageSize {
		t.Fatal("the first epoch leaves no disk block or RAM page zero")
	}
	junk := bytes.Repeat([]byte{0xa5}, diskBS)
	stageJunk := func(h replica.Handle) {
		t.Helper()
		begin := *e.begin
		begin.Plan, begin.Items, begin.Bytes = e.begin.Plan+1000, 2, 2*diskBS
		if err := h.Begin(&begin); err != nil {
			t.Fatal(err)
		}
		for _, it := range []wire.Item{
			&wire.DiskExtent{Seq: 0, Target: 0, Offset: blk * diskBS, Data: junk},
			&wire.MemRun{Seq: 1, Target: 1, Page: page, Data: junk},
		} {
			if err := h.Append(it); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := h.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	s := b.Store(t, 0, nil)
	for _, tc := range []struct {
		vm     string
		reopen bool
	}{{VM + "-same", false}, {VM + "-reopened", true}} {
		h := openVM(t, s, tc.vm, replica.OpenOptions{})
		stageJunk(h)
		if tc.reopen {
			h.Close()
			h = openVM(t, s, tc.vm, replica.OpenOptions{})
		}
		if err := send(h, e); err != nil {
			t.Fatalf("%s: %v", tc.vm, err)
		}
		if d := diffHandle(h, e.after); d != "" {
			t.Fatalf("%s: after the replaced epoch: %s", tc.vm, d)
		}
		h.Close()
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

const (
	diskSize = 64 << 10
	diskBS   = 4096
	ramSize  = 8 * vmspec.PageSize
)

// state is what a replica holds at an epoch.
type state struct {
	epoch     uint64
	cut       time.Time
	disk, ram []byte
	dev       []byte
}

func initial() *state {
	return &state{disk: make([]byte, diskSize), ram: make([]byte, ramSize)}
}

// epoch is one epoch as a sender sends it.
type epoch struct {
	begin  *wire.EpochBegin
	items  []wire.Item
	commit *wire.EpochCommit
	after  *state
}

// next makes the epoch after s from rng: disk extents, a zero run, RAM
// pages and device state.
func next(s *state, rng *rand.Rand) *epoch {
	n := &state{epoch: s.epoch + 1, cut: time.Unix(1_700_000_000+int64(s.epoch)*60, 0).UTC(),
		disk: bytes.Clone(s.disk), ram: bytes.Clone(s.ram)}
	fill := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return b
	}
	var items []wire.Item
	for range 2 {
		off := rng.UintN(diskSize/diskBS) * diskBS
		d := fill(diskBS)
		copy(n.disk[off:], d)
		items = append(items, &wire.DiskExtent{Seq: uint64(len(items)), Target: 0, Offset: uint64(off), Data: d})
	}
	zoff := rng.UintN(diskSize/diskBS) * diskBS
	clear(n.disk[zoff : zoff+diskBS])
	items = append(items, &wire.ZeroRun{Seq: uint64(len(items)), Target: 0, Offset: uint64(zoff), Length: diskBS})
	// Every third epoch leaves RAM alone: a store keeps an unwritten
	// target's table as it is.
	if n.epoch%3 != 0 {
		page := rng.UintN(ramSize / vmspec.PageSize)
		p := fill(vmspec.PageSize)
		copy(n.ram[page*vmspec.PageSize:], p)
		items = append(items, &wire.MemRun{Seq: uint64(len(items)), Target: 1, Page: uint64(page), Data: p})
	}
	n.dev = fill(300 + rng.IntN(200))
	items = append(items, &wire.DeviceState{Seq: uint64(len(items)), Offset: 0, Total: uint64(len(n.dev)), Data: n.dev})

	b := &wire.EpochBegin{Epoch: n.epoch, Cut: n.cut, Plan: n.epoch, Items: uint64(len(items)), Targets: []wire.Target{
		{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: diskSize, BlockSize: diskBS},
		{ID: 1, Kind: vmspec.KindRAM, Name: "pc.ram", Size: ramSize, BlockSize: vmspec.PageSize},
	}}
	dig := wire.NewEpochDigest(n.epoch)
	for _, it := range items {
		var dh uint64
		if d := wire.DataOf(it); d != nil {
			dh = xxhash.Sum64(d)
			b.Bytes += uint64(len(d))
		}
		dig.Add(wire.Summarize(it, dh))
	}
	c := &wire.EpochCommit{Epoch: n.epoch, Items: uint64(len(items)), Digest: dig.Sum(), States: []wire.TargetDigest{
		{Target: 0, Digest: blockhash.Of(n.disk, diskBS).Digest()},
		{Target: 1, Digest: blockhash.Of(n.ram, vmspec.PageSize).Digest()},
	}}
	return &epoch{begin: b, items: items, commit: c, after: n}
}

// history is a run of epochs from one seed, the same for every backend.
func history(n int) []*epoch { return historyFrom(11, n) }

// historyFrom is a run of epochs from seed.
func historyFrom(seed uint64, n int) []*epoch {
	rng := rand.New(rand.NewPCG(7, seed))
	s := initial()
	var out []*epoch
	for range n {
		e := next(s, rng)
		out = append(out, e)
		s = e.after
	}
	return out
}

func open(t *testing.T, s replica.Store, o replica.OpenOptions) replica.Handle {
	t.Helper()
	return openVM(t, s, VM, o)
}

func openVM(t *testing.T, s replica.Store, vm string, o replica.OpenOptions) replica.Handle {
	t.Helper()
	h, err := s.Open(t.Context(), vm, o)
	if err != nil {
		t.Fatalf("open %s: %v", s.Where(vm), err)
	}
	return h
}

// send stages and commits e in h. Each item's data is a buffer that is
// overwritten once Append returns, as a receiver decoding into one buffer
// does (wire.DecoderOptions.Borrow): a store must not keep it.
func send(h replica.Handle, e *epoch) error {
	if err := h.Begin(e.begin); err != nil {
		return err
	}
	var scratch []byte
	for _, it := range e.items {
		lent, data := lend(it, &scratch)
		if err := h.Append(lent); err != nil {
			return err
		}
		for i := range data {
			data[i] = 0xa5
		}
	}
	if _, err := h.Sync(); err != nil {
		return err
	}
	return h.Commit(e.commit)
}

// lend is it with its data copied into *scratch, and that data.
func lend(it wire.Item, scratch *[]byte) (wire.Item, []byte) {
	data := wire.DataOf(it)
	if len(data) == 0 {
		return it, nil
	}
	*scratch = append((*scratch)[:0], data...)
	b := *scratch
	switch f := it.(type) {
	case *wire.DiskExtent:
		c := *f
		c.Data = b
		return &c, b
	case *wire.MemRun:
		c := *f
		c.Data = b
		return &c, b
	case *wire.DeviceState:
		c := *f
		c.Data = b
		return &c, b
	}
	panic(fmt.Sprintf("replicatest: %T carries data", it))
}

// commit opens the replica, commits es in turn and closes it.
func commit(t *testing.T, s replica.Store, es ...*epoch) {
	t.Helper()
	commitVM(t, s, VM, es...)
}

func commitVM(t *testing.T, s replica.Store, vm string, es ...*epoch) {
	t.Helper()
	h := openVM(t, s, vm, replica.OpenOptions{Holder: "the suite"})
	defer h.Close()
	for _, e := range es {
		if err := send(h, e); err != nil {
			t.Fatalf("epoch %d: %v", e.begin.Epoch, err)
		}
	}
}

// diff says how img differs from want, "" if not at all.
func diff(img replica.Image, want *state) string {
	m := img.Manifest()
	if m.Epoch != want.epoch {
		return fmt.Sprintf("epoch %d, want %d", m.Epoch, want.epoch)
	}
	if !m.Cut.Equal(want.cut) {
		return fmt.Sprintf("cut %s, want %s", m.Cut, want.cut)
	}
	if want.epoch == 0 {
		if len(m.Targets) != 0 || m.DeviceState != nil {
			return "an empty replica lists targets"
		}
		return ""
	}
	for _, tc := range []struct {
		e    *replica.TargetEntry
		what string
		want []byte
		bs   int
	}{{m.Disk("vda"), "disk vda", want.disk, diskBS}, {m.RAM("pc.ram"), "RAM pc.ram", want.ram, vmspec.PageSize}} {
		if tc.e == nil {
			return tc.what + " missing from the manifest"
		}
		f, err := img.OpenTarget(tc.e)
		if err != nil {
			return fmt.Sprintf("%s: %v", tc.what, err)
		}
		got := make([]byte, len(tc.want))
		n, err := f.ReadAt(got, 0)
		f.Close()
		if n != len(got) {
			return fmt.Sprintf("%s: read %d of %d bytes: %v", tc.what, n, len(got), err)
		}
		if !bytes.Equal(got, tc.want) {
			return tc.what + " content differs"
		}
		if tc.e.Size != int64(len(tc.want)) || tc.e.Digest != blockhash.Of(tc.want, tc.bs).Digest() {
			return fmt.Sprintf("%s: manifest says %d bytes digest %016x", tc.what, tc.e.Size, tc.e.Digest)
		}
	}
	dev, err := img.DeviceState()
	if err != nil {
		return fmt.Sprintf("device state: %v", err)
	}
	if !bytes.Equal(dev, want.dev) {
		return fmt.Sprintf("device state: %d bytes, want %d", len(dev), len(want.dev))
	}
	return ""
}

// check opens the replica and checks it holds exactly want.
func check(t *testing.T, s replica.Store, want *state) {
	t.Helper()
	h := open(t, s, replica.OpenOptions{Holder: "the suite"})
	defer h.Close()
	if d := diffHandle(h, want); d != "" {
		t.Fatal(d)
	}
}

func diffHandle(h replica.Handle, want *state) string {
	m := h.Manifest()
	if p := h.Position(); p.Committed != m.Epoch || p.StateID != m.StateID {
		return fmt.Sprintf("position %+v does not match the manifest (epoch %d)", p, m.Epoch)
	}
	if want.epoch > 0 {
		if tab := h.Table(vmspec.KindDisk, "vda"); tab == nil || tab.Digest() != blockhash.Of(want.disk, diskBS).Digest() {
			return "block table of disk vda differs from its content"
		}
		if tab := h.Table(vmspec.KindRAM, "pc.ram"); tab == nil || tab.Digest() != blockhash.Of(want.ram, vmspec.PageSize).Digest() {
			return "block table of RAM pc.ram differs from its content"
		}
	}
	img, err := h.Export(m.Epoch, "", nil)
	if err != nil {
		return fmt.Sprintf("export epoch %d: %v", m.Epoch, err)
	}
	return diff(img, want)
}

func epochsReadBack(t *testing.T, b Backend) {
	es := history(3)
	s := b.Store(t, 0, nil)
	check(t, s, initial())
	for _, e := range es {
		commit(t, s, e)
		check(t, s, e.after)
	}
	if m, err := s.Manifest(VM); err != nil || m.Epoch != 3 {
		t.Fatalf("manifest read without the lock: %v, %v", m, err)
	}
	rep, err := s.Verify(VM)
	if err != nil || !rep.OK() || rep.Epoch != 3 {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	// A copy holds what the replica does, and stays when it moves on.
	h := open(t, s, replica.OpenOptions{})
	img, err := h.Export(3, b.Scratch(t), func(replica.TargetEntry) bool { return true })
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	e4 := next(es[2].after, rand.New(rand.NewPCG(1, 2)))
	commit(t, s, e4)
	if d := diff(img, es[2].after); d != "" {
		t.Fatalf("copy of epoch 3 after epoch 4 was committed: %s", d)
	}
}

// crashAtEveryOperation fails each storage operation of epoch 3 in turn,
// then loses power, and checks the replica holds exactly epoch 2 or 3, and
// takes epochs again.
func crashAtEveryOperation(t *testing.T, newBackend func(t *testing.T) Backend, keep int) {
	es := history(4)
	count := func() int {
		b := newBackend(t)
		commit(t, b.Store(t, keep, nil), es[:2]...)
		c := &errorfs.Counter{}
		commit(t, b.Store(t, keep, c), es[2])
		return c.Count()
	}
	n := count()
	points := n
	if testing.Short() {
		points = min(n, 40)
	}
	if sm, ok := newBackend(t).(Sampler); ok {
		points = max(1, min(n, sm.CrashPoints(n, testing.Short())))
	}
	var ops []int // the operations failed, evenly spread, the last included
	for k := range points {
		ops = append(ops, (n-1)-k*(n-1)/max(1, points-1))
	}
	t.Logf("failing %d of the %d operations of epoch 3", len(ops), n)
	outcomes := map[uint64]int{}
	for _, i := range ops {
		b := newBackend(t)
		commit(t, b.Store(t, keep, nil), es[:2]...)
		inj := errorfs.OnIndex(i, errorfs.ErrInjected)
		if h, err := b.Store(t, keep, inj).Open(t.Context(), VM, replica.OpenOptions{}); err == nil {
			send(h, es[2])
			h.Close()
		}
		b.Crash(t)
		s := b.Store(t, keep, nil)
		h, err := s.Open(t.Context(), VM, replica.OpenOptions{})
		if err != nil {
			t.Fatalf("failing op %d, then power loss: the replica cannot be opened: %v", i, err)
		}
		at := h.Manifest().Epoch
		var d string
		switch at {
		case 2, 3:
			d = diffHandle(h, es[at-1].after)
		default:
			d = fmt.Sprintf("at epoch %d", at)
		}
		if d != "" {
			h.Close()
			t.Fatalf("failing op %d, then power loss: the replica is neither epoch 2 nor 3: %s", i, d)
		}
		outcomes[at]++
		if keep > 0 && at == 3 {
			img, err := h.Export(2, b.Scratch(t), nil)
			if err != nil {
				t.Fatalf("failing op %d: epoch 2 cannot be restored: %v", i, err)
			}
			if d := diff(img, es[1].after); d != "" {
				t.Fatalf("failing op %d: restored epoch 2: %s", i, d)
			}
		}
		for _, e := range es[at:] {
			if err := send(h, e); err != nil {
				t.Fatalf("failing op %d, then power loss: epoch %d afterwards: %v", i, e.begin.Epoch, err)
			}
		}
		if d := diffHandle(h, es[3].after); d != "" {
			t.Fatalf("failing op %d: after epoch 4: %s", i, d)
		}
		h.Close()
	}
	t.Logf("%d operations; recovered to epoch 2: %d times, to epoch 3: %d times", n, outcomes[2], outcomes[3])
	if outcomes[2] == 0 || outcomes[3] == 0 {
		t.Errorf("the failures never reached one of the outcomes: %v", outcomes)
	}
}

// diskFull fills the disk at each write of epoch 3 in turn: the epoch
// fails with a storage error naming the cause, and once space is freed
// the replica is exactly epoch 2 or 3 and takes epochs again.
func diskFull(t *testing.T, newBackend func(t *testing.T) Backend) {
	es := history(4)
	writes := errorfs.Ops(errorfs.OpWrite, errorfs.OpWriteAt, errorfs.OpAllocate, errorfs.OpTruncate)
	b := newBackend(t)
	commit(t, b.Store(t, 0, nil), es[:2]...)
	c := &errorfs.Counter{}
	commit(t, b.Store(t, 0, errorfs.When(writes, c)), es[2])
	n := c.Count()
	if n == 0 {
		t.Fatal("an epoch wrote nothing")
	}
	for i := range n {
		b := newBackend(t)
		commit(t, b.Store(t, 0, nil), es[:2]...)
		full := errorfs.FromIndex(i, syscall.ENOSPC)
		h := open(t, b.Store(t, 0, errorfs.When(writes, full)), replica.OpenOptions{})
		err := send(h, es[2])
		h.Close()
		if !full.Fired() {
			t.Fatalf("write %d of %d never happened", i, n)
		}
		if err == nil {
			t.Fatalf("write %d failed with ENOSPC, yet the epoch was committed without error", i)
		}
		if !errors.Is(err, replica.ErrStorage) || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no space left") {
			t.Fatalf("disk full at write %d: %v; want a storage error saying the disk is full", i, err)
		}
		s := b.Store(t, 0, nil)
		h = open(t, s, replica.OpenOptions{})
		at := h.Manifest().Epoch
		if at != 2 && at != 3 {
			t.Fatalf("disk full at write %d: the replica is at epoch %d", i, at)
		}
		if d := diffHandle(h, es[at-1].after); d != "" {
			t.Fatalf("disk full at write %d: %s", i, d)
		}
		for _, e := range es[at:] {
			if err := send(h, e); err != nil {
				t.Fatalf("disk full at write %d, then space freed: epoch %d: %v", i, e.begin.Epoch, err)
			}
		}
		h.Close()
		check(t, s, es[3].after)
	}
}

func lockExclusive(t *testing.T, b Backend) {
	es := history(1)
	s := b.Store(t, 0, nil)
	commit(t, s, es...)
	h1 := open(t, s, replica.OpenOptions{Holder: "the first writer"})
	_, err := b.Store(t, 0, nil).Open(t.Context(), VM, replica.OpenOptions{Holder: "a second writer"})
	if !errors.Is(err, replica.ErrLocked) || !strings.Contains(err.Error(), "the first writer") {
		t.Fatalf("second open while held: %v; want ErrLocked naming the holder", err)
	}
	if err := s.WaitUnlocked(t.Context(), VM, 0); !errors.Is(err, replica.ErrLocked) {
		t.Fatalf("WaitUnlocked while held: %v, want ErrLocked", err)
	}
	// A holder that lets go within the wait is waited for.
	go func() { time.Sleep(50 * time.Millisecond); h1.Close() }()
	h2, err := s.Open(t.Context(), VM, replica.OpenOptions{Holder: "a patient writer", LockWait: 10 * time.Second})
	if err != nil {
		t.Fatalf("open waiting for the holder to let go: %v", err)
	}
	if err := s.WaitUnlocked(t.Context(), VM, 0); !errors.Is(err, replica.ErrLocked) {
		t.Fatalf("WaitUnlocked while held: %v, want ErrLocked", err)
	}
	h2.Close()
	if err := s.WaitUnlocked(t.Context(), VM, 0); err != nil {
		t.Fatalf("WaitUnlocked once free: %v", err)
	}
	// A holder that died (power loss) holds nothing.
	dead := open(t, s, replica.OpenOptions{Holder: "a process about to die"})
	b.Crash(t)
	h3, err := b.Store(t, 0, nil).Open(t.Context(), VM, replica.OpenOptions{})
	if err != nil {
		t.Fatalf("open after the holder died: %v", err)
	}
	if d := diffHandle(h3, es[0].after); d != "" {
		t.Fatal(d)
	}
	h3.Close()
	dead.Close()
}

func recoveryPoints(t *testing.T, b Backend) {
	es := history(4)
	s := b.Store(t, 2, nil)
	commit(t, s, es...)
	pts, err := s.Points(VM)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, p := range pts {
		got = append(got, p.Manifest.Epoch)
	}
	if fmt.Sprint(got) != "[2 3 4]" {
		t.Fatalf("points %v, want [2 3 4] (two kept and the committed epoch)", got)
	}
	h := open(t, s, replica.OpenOptions{})
	defer h.Close()
	for _, e := range es[1:3] {
		img, err := h.Export(e.after.epoch, b.Scratch(t), nil)
		if err != nil {
			t.Fatalf("export point %d: %v", e.after.epoch, err)
		}
		if d := diff(img, e.after); d != "" {
			t.Fatalf("point %d: %s", e.after.epoch, d)
		}
	}
	if _, err := h.Export(1, b.Scratch(t), nil); err == nil {
		t.Fatal("exported epoch 1, which is not kept")
	}
	if d := diffHandle(h, es[3].after); d != "" {
		t.Fatalf("the replica after exporting its points: %s", d)
	}
}

// retentionInherited: the receiver keeps 2 points; epoch 3's apply is
// cut short by a failed operation and a power loss, and another opener
// (status, a takeover: KeepInherited) finishes it. The points left are the
// ones the receiver's rule keeps, not none; the receiver then goes on.
func retentionInherited(t *testing.T, newBackend func(t *testing.T) Backend) {
	es := history(4)
	epochs := func(s replica.Store) string {
		pts, err := s.Points(VM)
		if err != nil {
			t.Fatal(err)
		}
		var got []uint64
		for _, p := range pts {
			got = append(got, p.Manifest.Epoch)
		}
		return fmt.Sprint(got)
	}
	b := newBackend(t)
	commit(t, b.Store(t, 2, nil), es[:2]...)
	c := &errorfs.Counter{}
	commit(t, b.Store(t, 2, c), es[2])
	n := c.Count()
	points := min(n, 12)
	if sm, ok := b.(Sampler); ok {
		points = max(1, min(points, sm.CrashPoints(n, testing.Short())))
	}
	replayed := 0
	for k := range points {
		i := (n - 1) - k*(n-1)/max(1, points-1)
		b := newBackend(t)
		commit(t, b.Store(t, 2, nil), es[:2]...)
		if h, err := b.Store(t, 2, errorfs.OnIndex(i, errorfs.ErrInjected)).Open(t.Context(), VM, replica.OpenOptions{}); err == nil {
			send(h, es[2])
			h.Close()
		}
		b.Crash(t)
		s := b.Store(t, replica.KeepInherited, nil)
		h := open(t, s, replica.OpenOptions{})
		at := h.Manifest().Epoch
		if at == 3 {
			img, err := h.Export(1, b.Scratch(t), nil)
			if err != nil {
				t.Fatalf("failing op %d, finished by another opener: epoch 1 cannot be restored: %v", i, err)
			}
			if d := diff(img, es[0].after); d != "" {
				t.Fatalf("failing op %d: restored epoch 1: %s", i, d)
			}
		}
		h.Close()
		want := map[uint64]string{2: "[1 2]", 3: "[1 2 3]"}[at]
		if got := epochs(s); got != want {
			t.Fatalf("failing op %d, finished by another opener at epoch %d: points %s, want %s (the receiver keeps 2)", i, at, got, want)
		}
		if at == 3 {
			replayed++
		}
		rs := b.Store(t, 2, nil)
		commit(t, rs, es[at:]...)
		if got := epochs(rs); got != "[2 3 4]" {
			t.Fatalf("failing op %d: after the receiver's epoch 4: points %s, want [2 3 4]", i, got)
		}
	}
	t.Logf("%d of %d failed operations: epoch 3 recovered, by the other opener or before the failure", replayed, points)
	if replayed == 0 {
		t.Error("no failure recovered to epoch 3")
	}
}

// groupPoints: two members of a consistency group, one committing later
// cuts before the other, keep the epochs of their newest complete group
// point whatever keep says (restorable exactly), and let them go once a
// newer group point is complete.
func groupPoints(t *testing.T, b Backend, keep int) {
	s := b.Store(t, keep, nil)
	members := []string{"db", VM}
	tag := func(e *epoch, cut uint64) *epoch {
		e.begin.Group = &vmspec.GroupCut{Group: "shop", Cut: cut, Members: members}
		return e
	}
	db, web := historyFrom(21, 2), historyFrom(22, 7)
	points := func(vm string) []uint64 {
		t.Helper()
		pts, err := s.Points(vm)
		if err != nil {
			t.Fatal(err)
		}
		var eps []uint64
		for _, p := range pts {
			eps = append(eps, p.Manifest.Epoch)
		}
		return eps
	}
	// keeps checks that vm keeps every epoch of want and none before
	// oldest; a store may keep more between them (a file store's points
	// are chained: rolling back to one passes through every later one).
	keeps := func(vm string, oldest uint64, want ...uint64) {
		t.Helper()
		got := points(vm)
		for _, e := range want {
			if !slices.Contains(got, e) {
				t.Fatalf("%s keeps %v, want %v among them (keep %d)", vm, got, want, keep)
			}
		}
		if len(got) > 0 && got[0] < oldest {
			t.Fatalf("%s keeps %v, nothing before %d wanted (keep %d)", vm, got, oldest, keep)
		}
	}
	restores := func(vm string, want *state) {
		t.Helper()
		h := openVM(t, s, vm, replica.OpenOptions{})
		defer h.Close()
		img, err := h.Export(want.epoch, b.Scratch(t), nil)
		if err != nil {
			t.Fatalf("export epoch %d of %s: %v", want.epoch, vm, err)
		}
		if d := diff(img, want); d != "" {
			t.Fatalf("%s at epoch %d: %s", vm, want.epoch, d)
		}
	}
	commitVM(t, s, "db", tag(db[0], 1))
	commitVM(t, s, VM, tag(web[0], 1))         // group point 1: db 1, web 1
	commitVM(t, s, VM, web[1], web[2], web[3]) // web's own epochs
	commitVM(t, s, VM, tag(web[4], 2), web[5]) // cut 2: web 5, db not yet
	keeps(VM, 1, 1, 5, 6)
	restores(VM, web[0].after)
	commitVM(t, s, "db", tag(db[1], 2)) // group point 2: db 2, web 5
	commitVM(t, s, VM, web[6])
	keeps(VM, 5, 5, 7)
	keeps("db", 2-uint64(keep), 2)
	if keep > 0 {
		keeps(VM, 5, 5, 6, 7)
	}
	restores(VM, web[4].after)
}

func takeoverMark(t *testing.T, b Backend) {
	es := history(2)
	s := b.Store(t, 0, nil)
	commit(t, s, es[0])
	if m, err := s.TakenOver(VM); m != nil || err != nil {
		t.Fatalf("mark before any takeover: %+v, %v", m, err)
	}
	h := open(t, s, replica.OpenOptions{Holder: "a takeover", AllowTakenOver: true})
	at := time.Unix(1_800_000_000, 0).UTC()
	if err := h.MarkTakenOver(replica.TakeoverMark{Epoch: 1, At: at, Reason: "failover runbook test"}); err != nil {
		t.Fatal(err)
	}
	h.Close()
	m, err := s.TakenOver(VM)
	if err != nil || m == nil || m.Epoch != 1 || !m.At.Equal(at) || m.Reason != "failover runbook test" {
		t.Fatalf("mark: %+v, %v", m, err)
	}
	_, err = s.Open(t.Context(), VM, replica.OpenOptions{Holder: "the receiver"})
	if !errors.Is(err, replica.ErrTakenOver) || !strings.Contains(err.Error(), "failover runbook test") {
		t.Fatalf("open of a taken-over replica for epochs: %v; want ErrTakenOver with the reason", err)
	}
	b.Crash(t)
	s = b.Store(t, 0, nil)
	if _, err := s.Open(t.Context(), VM, replica.OpenOptions{}); !errors.Is(err, replica.ErrTakenOver) {
		t.Fatalf("the mark did not survive a power loss: %v", err)
	}
	h = open(t, s, replica.OpenOptions{AllowTakenOver: true})
	defer h.Close()
	if d := diffHandle(h, es[0].after); d != "" {
		t.Fatal(d)
	}
}

// releasedBetweenEpochs releases a handle after it committed an epoch, as
// a receiver does until the sender's next epoch, and takes it back: it
// goes on from what it knows only if nobody wrote the replica meanwhile.
// A writer that committed, or left a staged (or committed but unapplied)
// journal, makes it ErrBroken: going on would stage over that journal.
func releasedBetweenEpochs(t *testing.T, newBackend func(t *testing.T) Backend) {
	es := history(3)
	for _, tc := range []struct {
		name  string
		other func(t *testing.T, s replica.Store)
		want  error
	}{
		{"nobody came", func(*testing.T, replica.Store) {}, nil},
		{"a drill read it", func(t *testing.T, s replica.Store) {
			h := open(t, s, replica.OpenOptions{Holder: "a drill", AllowTakenOver: true})
			if p := h.Position(); p.Committed != 2 {
				t.Errorf("the other opener sees %+v, want epoch 2 committed", p)
			}
			h.Close()
		}, nil},
		{"another writer committed", func(t *testing.T, s replica.Store) { commit(t, s, es[2]) }, replica.ErrBroken},
		{"another writer staged", func(t *testing.T, s replica.Store) {
			h := open(t, s, replica.OpenOptions{Holder: "another receiver"})
			if err := h.Begin(es[2].begin); err != nil {
				t.Fatal(err)
			}
			if err := h.Append(es[2].items[0]); err != nil {
				t.Fatal(err)
			}
			if _, err := h.Sync(); err != nil {
				t.Fatal(err)
			}
			h.Close()
		}, replica.ErrBroken},
		{"a failover took it over", func(t *testing.T, s replica.Store) { takeOver(t, s, 2) }, replica.ErrTakenOver},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, h := receiverAt(t, newBackend, es[0])
			if err := send(h, es[1]); err != nil {
				t.Fatal(err)
			}
			if err := h.Release(); err != nil {
				t.Fatal(err)
			}
			if err := h.Begin(es[2].begin); !errors.Is(err, replica.ErrBroken) {
				t.Fatalf("begin while released: %v, want ErrBroken", err)
			}
			tc.other(t, s)
			err := h.Reacquire(t.Context(), 50*time.Millisecond)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("reacquire: %v, want %v", err, tc.want)
			}
			if err != nil {
				if err := h.Begin(es[2].begin); err == nil {
					t.Fatal("a replica that could not be taken back began an epoch")
				}
				return
			}
			if err := send(h, es[2]); err != nil {
				t.Fatal(err)
			}
			if d := diffHandle(h, es[2].after); d != "" {
				t.Fatal(d)
			}
			h.Close()
			h = open(t, s, replica.OpenOptions{Holder: "the suite"})
			defer h.Close()
			if d := diffHandle(h, es[2].after); d != "" {
				t.Fatalf("reopened: %s", d)
			}
		})
	}
}

// receiverAt is a new store at e, and a handle open on it as a receiver's
// (closed when the test ends).
func receiverAt(t *testing.T, newBackend func(t *testing.T) Backend, e *epoch) (replica.Store, replica.Handle) {
	t.Helper()
	s := newBackend(t).Store(t, 0, nil)
	commit(t, s, e)
	h := open(t, s, replica.OpenOptions{Holder: "the receiver"})
	t.Cleanup(func() { h.Close() })
	return s, h
}

// takeOver marks the replica taken over at epoch, as a failover does.
func takeOver(t *testing.T, s replica.Store, epoch uint64) {
	t.Helper()
	h := open(t, s, replica.OpenOptions{Holder: "a failover", AllowTakenOver: true})
	defer h.Close()
	if err := h.MarkTakenOver(replica.TakeoverMark{Epoch: epoch, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
}

func releaseReacquire(t *testing.T, newBackend func(t *testing.T) Backend) {
	es := history(2)
	e := es[1]
	for _, tc := range []struct {
		name  string
		other func(t *testing.T, s replica.Store) (keep replica.Handle)
		want  error
	}{
		{"nobody came", func(*testing.T, replica.Store) replica.Handle { return nil }, nil},
		{"a drill read it", func(t *testing.T, s replica.Store) replica.Handle {
			h := open(t, s, replica.OpenOptions{Holder: "a drill", AllowTakenOver: true})
			if p := h.Position(); p.StagedEpoch != 2 || p.StagedDurable != 2 {
				t.Errorf("the other opener sees %+v, want epoch 2 staged with 2 items", p)
			}
			h.Close()
			return nil
		}, nil},
		{"a failover took it over", func(t *testing.T, s replica.Store) replica.Handle {
			takeOver(t, s, 1)
			return nil
		}, replica.ErrTakenOver},
		{"someone still holds it", func(t *testing.T, s replica.Store) replica.Handle {
			return open(t, s, replica.OpenOptions{Holder: "a failover", AllowTakenOver: true})
		}, replica.ErrLocked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, h := receiverAt(t, newBackend, es[0])
			if err := h.Begin(e.begin); err != nil {
				t.Fatal(err)
			}
			for _, it := range e.items[:2] {
				if err := h.Append(it); err != nil {
					t.Fatal(err)
				}
			}
			if err := h.Release(); err != nil {
				t.Fatal(err)
			}
			if !h.Released() {
				t.Fatal("Released is false after Release")
			}
			if err := h.Append(e.items[2]); !errors.Is(err, replica.ErrBroken) {
				t.Fatalf("append while released: %v, want ErrBroken", err)
			}
			if n, err := h.Sync(); n != 2 || err != nil {
				t.Fatalf("sync while released: %d, %v; want the 2 items Release made durable", n, err)
			}
			keep := tc.other(t, s)
			err := h.Reacquire(t.Context(), 50*time.Millisecond)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("reacquire: %v, want %v", err, tc.want)
			}
			if keep != nil {
				keep.Close()
				return
			}
			if err != nil {
				if err := h.Append(e.items[2]); err == nil {
					t.Fatal("a replica that could not be taken back accepted an item")
				}
				return
			}
			for _, it := range e.items[2:] {
				if err := h.Append(it); err != nil {
					t.Fatal(err)
				}
			}
			if err := h.Commit(e.commit); err != nil {
				t.Fatal(err)
			}
			if d := diffHandle(h, e.after); d != "" {
				t.Fatal(d)
			}
		})
	}
}
