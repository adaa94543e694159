package receiver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

func now() time.Time { return time.Unix(1700000000, 0) }

var alice = receiver.Peer{Fingerprint: "sha256:aa", Name: "alice"}

func allowAll(receiver.Peer, string) error { return nil }

func newReceiver(t *testing.T, fsys vfs.FS, opts ...func(*receiver.Options)) *receiver.Receiver {
	t.Helper()
	o := receiver.Options{Root: "/replicas", FS: fsys, Authorize: allowAll, AckBytes: 256 << 10, Now: now}
	for _, f := range opts {
		f(&o)
	}
	r, err := receiver.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func newSource(rng *rand.Rand) *testkit.MemSource {
	disk := &testkit.MemTarget{Kind: vmspec.KindDisk, Name: "vda", BlockSize: 64 << 10, Data: make([]byte, 8<<20+512)}
	ram := &testkit.MemTarget{Kind: vmspec.KindRAM, Name: "pc.ram", BlockSize: 4096, Data: make([]byte, 4<<20)}
	src := &testkit.MemSource{Targets: []*testkit.MemTarget{disk, ram}, DeviceState: []byte("device state 0")}
	testkit.RandomWrites(rng, disk, 20, 200<<10)
	testkit.RandomWrites(rng, ram, 50, 16<<10)
	return src
}

func mutate(rng *rand.Rand, src *testkit.MemSource, epoch int) {
	src.Mutate(func() {
		testkit.RandomWrites(rng, src.Targets[0], 10, 100<<10)
		testkit.RandomWrites(rng, src.Targets[1], 30, 8<<10)
		src.DeviceState = []byte("device state " + string(rune('a'+epoch)))
	})
}

func newSender(t *testing.T, src sender.Source, d sender.Dialer, sfs vfs.FS) *sender.Sender {
	t.Helper()
	s, err := sender.New(sender.Options{VM: "web-1", Source: src, Dialer: d, Store: sender.Store{FS: sfs, Dir: "/state/web-1"}, Compression: wire.CompressFast, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func checkReplica(t *testing.T, fsys vfs.FS, want map[string][]byte, epoch uint64) {
	t.Helper()
	got, state, err := testkit.ReplicaState(fsys, "/replicas/web-1")
	if err != nil {
		t.Fatal(err)
	}
	if got != epoch {
		t.Fatalf("replica at epoch %d, want %d", got, epoch)
	}
	if d := testkit.DiffStates(want, state); d != "" {
		t.Fatalf("epoch %d: replica differs from source: %s", epoch, d)
	}
	rep, err := replica.Verify(fsys, "/replicas/web-1", "web-1")
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("verify: %v", rep.Problems)
	}
}

func TestEpochsConverge(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	rfs, sfs := memfs.New(), memfs.New()
	src := newSource(rng)
	s := newSender(t, src, testkit.PipeDialer(newReceiver(t, rfs), alice), sfs)
	defer s.Close()
	for e := 1; e <= 5; e++ {
		want := src.SourceState()
		res, err := s.RunEpoch(context.Background())
		if err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
		if res.Epoch != uint64(e) {
			t.Fatalf("epoch %d reported as %d", e, res.Epoch)
		}
		checkReplica(t, rfs, want, uint64(e))
		t.Logf("epoch %d: base %s, %d items, %d data bytes, %d on the wire", e, res.Base, res.Items, res.DataBytes, res.WireBytes)
		if e > 1 && res.DataBytes > 6<<20 {
			t.Errorf("epoch %d sent %d bytes: changes only should go", e, res.DataBytes)
		}
		mutate(rng, src, e)
	}
}

func TestRecoverAllSkipsLockedAndDamagedReplicas(t *testing.T) {
	rfs := memfs.New()
	rng := rand.New(rand.NewPCG(9, 9))
	rcv := newReceiver(t, rfs)
	for _, vm := range []string{"web-1", "web-2"} {
		s, err := sender.New(sender.Options{VM: vm, Source: newSource(rng), Dialer: testkit.PipeDialer(rcv, alice), Store: sender.Store{FS: memfs.New(), Dir: "/s"}, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.RunEpoch(context.Background()); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	// web-1 is being verified (locked); web-2's manifest is damaged.
	held, err := replica.Open(replica.Options{FS: rfs, Dir: "/replicas/web-1", VM: "web-1", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	f, _ := rfs.OpenReadWrite("/replicas/web-2/MANIFEST")
	f.WriteAt([]byte("garbage"), 10)
	f.Close()
	if err := newReceiver(t, rfs).RecoverAll(); err != nil {
		t.Fatalf("one locked and one damaged replica stopped recovery of the rest: %v", err)
	}
}

// TestSenderStateLost: a sender whose state directory was lost fetches the
// replica's block tables and sends only what changed, not everything.
func TestSenderStateLost(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	rfs := memfs.New()
	src := newSource(rng)
	rcv := newReceiver(t, rfs)
	s := newSender(t, src, testkit.PipeDialer(rcv, alice), memfs.New())
	first, err := s.RunEpoch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	mutate(rng, src, 1)
	want := src.SourceState()
	// A new sender with an empty state directory.
	s2 := newSender(t, src, testkit.PipeDialer(rcv, alice), memfs.New())
	defer s2.Close()
	res, err := s2.RunEpoch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checkReplica(t, rfs, want, 2)
	t.Logf("first epoch %d bytes; after losing its state the sender sent %d bytes (base %s)", first.DataBytes, res.DataBytes, res.Base)
	if res.Base != "replica-tables" || res.DataBytes >= first.DataBytes/2 {
		t.Fatalf("sender without state sent %d of the first epoch's %d bytes (base %s): not a table-compared pass", res.DataBytes, first.DataBytes, res.Base)
	}
}

// TestTakenOverReplicaRefusesEpochs: once a replica is taken over at the
// DR site (it runs as the VM), its sender is refused with ErrTakenOver,
// nothing is written, and opening it anyway needs AllowTakenOver.
func TestTakenOverReplicaRefusesEpochs(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	rfs := memfs.New()
	src := newSource(rng)
	s := newSender(t, src, testkit.PipeDialer(newReceiver(t, rfs), alice), memfs.New())
	defer s.Close()
	want := src.SourceState()
	if _, err := s.RunEpoch(context.Background()); err != nil {
		t.Fatal(err)
	}
	rep, err := replica.Open(replica.Options{FS: rfs, Dir: "/replicas/web-1", VM: "web-1", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.MarkTakenOver(replica.TakeoverMark{Epoch: 1, At: now(), Reason: "failover runbook test"}); err != nil {
		t.Fatal(err)
	}
	rep.Close()

	mutate(rng, src, 1)
	_, err = s.RunEpoch(context.Background())
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.ErrTakenOver || we.Code.Retryable() || !strings.Contains(err.Error(), "failover runbook test") {
		t.Fatalf("sender into a taken-over replica: %v", err)
	}
	checkReplica(t, rfs, want, 1)
	if _, err := replica.Open(replica.Options{FS: rfs, Dir: "/replicas/web-1", VM: "web-1", Now: now}); !errors.Is(err, replica.ErrTakenOver) {
		t.Fatalf("open without AllowTakenOver: %v", err)
	}
	rep, err = replica.Open(replica.Options{FS: rfs, Dir: "/replicas/web-1", VM: "web-1", Now: now, AllowTakenOver: true})
	if err != nil {
		t.Fatal(err)
	}
	rep.Close()
}

// TestCommitReportsRAMWrites: the commit hook names each RAM block's file
// and the pages the epoch wrote, which is what the warm-page keeper learns
// the hot set from.
func TestCommitReportsRAMWrites(t *testing.T) {
	rfs := memfs.New()
	var got []receiver.EpochStats
	rcv, err := receiver.New(receiver.Options{Root: "/replicas", FS: rfs, Authorize: allowAll, Now: now,
		OnCommit: func(s receiver.EpochStats) { got = append(got, s) }})
	if err != nil {
		t.Fatal(err)
	}
	src := newSource(rand.New(rand.NewPCG(9, 9)))
	s := newSender(t, src, testkit.PipeDialer(rcv, alice), memfs.New())
	defer s.Close()
	if _, err := s.RunEpoch(context.Background()); err != nil {
		t.Fatal(err)
	}
	src.Mutate(func() {
		ram := src.Targets[1].Data
		copy(ram[5*4096:], bytes.Repeat([]byte{7}, 3*4096)) // pages 5-7
		clear(ram[900*4096 : 901*4096])                     // page 900, if it held data
		ram[900*4096] = 1
	})
	if _, err := s.RunEpoch(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || len(got[1].RAM) != 1 {
		t.Fatalf("commit stats: %+v", got)
	}
	r := got[1].RAM[0]
	if r.Name != "pc.ram" || r.Size != 4<<20 || !strings.HasPrefix(r.File, "/replicas/web-1/") {
		t.Fatalf("RAM block %+v", r)
	}
	pages := map[int64]bool{}
	for _, w := range r.Written {
		for p := w.First; p < w.First+w.Count; p++ {
			pages[p] = true
		}
	}
	if len(pages) != 4 || !pages[5] || !pages[6] || !pages[7] || !pages[900] {
		t.Fatalf("written pages %v", r.Written)
	}
}

// TestDedupReferencesDiskPages: with dedup on, memory pages that equal a
// disk page of the same cut (a guest's page cache) travel as references,
// verified on the sender, and the replica's RAM still equals the source's.
func TestDedupReferencesDiskPages(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	rfs := memfs.New()
	src := newSource(rng)
	disk, ram := src.Targets[0], src.Targets[1]
	page := func(b []byte, i int) []byte { return b[i*4096 : (i+1)*4096] }
	fill := func(b []byte) {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	}
	// The "page cache": RAM pages 100-163 hold disk pages 40-103; RAM page
	// 300 holds disk page 7.
	src.Mutate(func() {
		for i := 0; i < len(disk.Data)/4096; i++ {
			if i%3 == 0 {
				fill(page(disk.Data, i)) // files on the disk
			}
		}
		for i := range 64 {
			fill(page(disk.Data, 40+i))
			copy(page(ram.Data, 100+i), page(disk.Data, 40+i))
		}
		copy(page(ram.Data, 300), page(disk.Data, 7))
		copy(page(disk.Data, 7), bytes.Repeat([]byte{0x5a}, 4096))
		copy(page(ram.Data, 300), page(disk.Data, 7))
	})
	s, err := sender.New(sender.Options{VM: "web-1", Source: src, Dialer: testkit.PipeDialer(newReceiver(t, rfs), alice),
		Store: sender.Store{FS: memfs.New(), Dir: "/s"}, Compression: wire.CompressFast, Now: now, Dedup: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for e := 1; e <= 3; e++ {
		want := src.SourceState()
		res, err := s.RunEpoch(context.Background())
		if err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
		checkReplica(t, rfs, want, uint64(e))
		t.Logf("epoch %d: RAM pages as data %d, as references %d, as zeros %d; %d data bytes", e, res.RAMDataPages, res.RAMRefPages, res.RAMZeroPages, res.DataBytes)
		if e == 1 && res.RAMRefPages < 65 {
			t.Fatalf("epoch 1: %d references, want the 65 page-cache pages at least", res.RAMRefPages)
		}
		// The guest reads more files: RAM takes copies of other disk pages,
		// and the disk changes under a page that was referenced before.
		src.Mutate(func() {
			for i := range 16 {
				fill(page(disk.Data, 200+i+e*20))
				copy(page(ram.Data, 500+i+e*20), page(disk.Data, 200+i+e*20))
			}
			copy(page(disk.Data, 41), bytes.Repeat([]byte{byte(e)}, 4096))
		})
	}
}

// TestDedupReferencesRAMPages: memory pages equal to other memory pages
// travel as references to them, across RAM targets and epochs, with the
// sender's state sometimes lost (so its idea of the replica comes from the
// replica's tables), and the replica is exact after every epoch. Contents
// come from a small pool so that most changed pages repeat one another;
// the receiver refuses a reference that reads a page written by a
// reference, so a wrong choice of source fails the epoch.
func TestDedupReferencesRAMPages(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	rfs := memfs.New()
	disk := &testkit.MemTarget{Kind: vmspec.KindDisk, Name: "vda", BlockSize: 64 << 10, Data: make([]byte, 1<<20)}
	ram0 := &testkit.MemTarget{Kind: vmspec.KindRAM, Name: "pc.ram", BlockSize: 4096, Data: make([]byte, 2<<20)}
	ram1 := &testkit.MemTarget{Kind: vmspec.KindRAM, Name: "vga.vram", BlockSize: 4096, Data: make([]byte, 256<<10)}
	src := &testkit.MemSource{Targets: []*testkit.MemTarget{disk, ram0, ram1}, DeviceState: []byte("dev")}
	pool := make([][]byte, 12)
	for i := range pool {
		pool[i] = make([]byte, 4096)
		for j := range pool[i] {
			pool[i][j] = byte(rng.Uint32())
		}
	}
	scribble := func(n int) {
		src.Mutate(func() {
			for range n {
				tg := []*testkit.MemTarget{ram0, ram0, ram0, ram1}[rng.IntN(4)]
				pg := rng.IntN(len(tg.Data) / 4096)
				p := tg.Data[pg*4096 : (pg+1)*4096]
				switch rng.IntN(10) {
				case 0:
					clear(p)
				case 1:
					for j := range p {
						p[j] = byte(rng.Uint32()) // unique
					}
				default:
					copy(p, pool[rng.IntN(len(pool))])
				}
			}
		})
	}
	scribble(400)
	rcv := newReceiver(t, rfs)
	// Progress counts sent bytes as the plan counts its total (references
	// carry no data): sent never passes all.
	var progressErr atomic.Value
	progress := func(p sender.Progress) {
		if p.SentBytes > p.AllBytes {
			progressErr.Store(fmt.Sprintf("epoch %d: progress sent %d of %d bytes", p.Epoch, p.SentBytes, p.AllBytes))
		}
	}
	newDedupSender := func() *sender.Sender {
		s, err := sender.New(sender.Options{VM: "web-1", Source: src, Dialer: testkit.PipeDialer(rcv, alice),
			Store: sender.Store{FS: memfs.New(), Dir: "/s"}, Compression: wire.CompressFast, Now: now, Dedup: true, Progress: progress})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := newDedupSender()
	defer func() { s.Close() }()
	var dups int64
	for e := 1; e <= 8; e++ {
		want := src.SourceState()
		res, err := s.RunEpoch(context.Background())
		if err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
		checkReplica(t, rfs, want, uint64(e))
		t.Logf("epoch %d (base %s): RAM pages as data %d, as references %d (to memory %d), zeros %d; %d bytes on the wire",
			e, res.Base, res.RAMDataPages, res.RAMRefPages, res.RAMDupPages, res.RAMZeroPages, res.WireBytes)
		if res.RAMDataPages > int64(len(pool))+200 {
			t.Errorf("epoch %d: %d memory pages went as data; most changed pages repeat %d contents", e, res.RAMDataPages, len(pool))
		}
		dups += res.RAMDupPages
		scribble(150)
		if e%3 == 0 { // a restarted sender: no state, no index
			s.Close()
			s = newDedupSender()
		}
	}
	if dups == 0 {
		t.Fatal("no memory page travelled as a reference to another")
	}
	if e := progressErr.Load(); e != nil {
		t.Error(e)
	}
}

func keepPoints(n int) func(*receiver.Options) { return func(o *receiver.Options) { o.KeepPoints = n } }

// TestRecoveryPoints: with two recovery points kept, the replica can be
// rolled back to either of the two epochs before its newest, exactly, and
// the rolled-back copy verifies; older epochs are pruned.
func TestRecoveryPoints(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	rfs := memfs.New()
	src := newSource(rng)
	s := newSender(t, src, testkit.PipeDialer(newReceiver(t, rfs, keepPoints(2)), alice), memfs.New())
	defer s.Close()
	states := map[uint64]map[string][]byte{}
	for e := uint64(1); e <= 5; e++ {
		states[e] = src.SourceState()
		if _, err := s.RunEpoch(context.Background()); err != nil {
			t.Fatal(err)
		}
		mutate(rng, src, int(e))
		src.Mutate(func() { src.Targets[0].Data = append(src.Targets[0].Data, make([]byte, 64<<10)...) }) // the disk grows
	}
	pts, err := replica.Points(rfs, "/replicas/web-1")
	if err != nil {
		t.Fatal(err)
	}
	var eps []uint64
	for _, p := range pts {
		eps = append(eps, p.Manifest.Epoch)
	}
	if !slices.Equal(eps, []uint64{3, 4, 5}) {
		t.Fatalf("points %v, want [3 4 5]", eps)
	}
	for _, e := range eps {
		to := fmt.Sprintf("/restore-%d", e)
		m, err := replica.Materialize(rfs, "/replicas/web-1", e, to)
		if err != nil {
			t.Fatalf("materialize %d: %v", e, err)
		}
		_, state, err := testkit.ReplicaState(rfs, to)
		if err != nil {
			t.Fatal(err)
		}
		if d := testkit.DiffStates(states[e], state); d != "" || m.Epoch != e {
			t.Fatalf("epoch %d restored wrong: %s", e, d)
		}
		rep, err := replica.Verify(rfs, to, "web-1")
		if err != nil || !rep.OK() {
			t.Fatalf("restored epoch %d does not verify: %v %v", e, err, rep)
		}
	}
	if _, err := replica.Materialize(rfs, "/replicas/web-1", 2, "/restore-2"); err == nil || !strings.Contains(err.Error(), "no recovery point for epoch 2") {
		t.Fatalf("pruned point: %v", err)
	}
	// The replica itself is still at its newest epoch.
	checkReplica(t, rfs, states[5], 5)
}

// TestSeededReplicaGetsOnlyDifferences is failback's first leg: the
// protected site's own old disk is seeded as a replica, and a sender that
// never replicated to it sends only the blocks that differ (plus the RAM,
// which the seed lacks).
func TestSeededReplicaGetsOnlyDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	rfs := memfs.New()
	src := newSource(rng)
	old := bytes.Clone(src.Targets[0].Data)
	if _, err := replica.Seed(rfs, "/replicas/web-1", "web-1", []replica.SeedTarget{
		{Kind: vmspec.KindDisk, Name: "vda", Size: int64(len(old)), BlockSize: 64 << 10, Reader: bytes.NewReader(old)},
	}, now); err != nil {
		t.Fatal(err)
	}
	if _, err := replica.Seed(rfs, "/replicas/web-1", "web-1", nil, now); err == nil {
		t.Fatal("seeded over an existing replica")
	}
	mutate(rng, src, 1) // the VM moved on at the other site
	want := src.SourceState()
	s := newSender(t, src, testkit.PipeDialer(newReceiver(t, rfs), alice), memfs.New())
	defer s.Close()
	res, err := s.RunEpoch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checkReplica(t, rfs, want, 2)
	var diskBytes int
	for _, it := range want {
		diskBytes += len(it)
	}
	t.Logf("failback epoch: base %s, %d data bytes of %d in all", res.Base, res.DataBytes, diskBytes)
	if res.Base != "replica-tables" || res.DataBytes >= uint64(len(old)) {
		t.Fatalf("failback sent %d bytes with base %s; the disk is %d bytes", res.DataBytes, res.Base, len(old))
	}
}
