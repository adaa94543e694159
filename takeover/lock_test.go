package takeover_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/takeover"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vmspec"
)

// A takeover never reads a replica while a receiver applies an epoch to
// it: it reports what holds the replica when that outlasts its wait, and
// otherwise waits for the apply and takes the replica whole at the new
// epoch. The receiver's apply is held at its first image write.
func TestPrepareWaitsForApply(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "replicas")
	repl := filepath.Join(root, "app-1")
	var armed atomic.Bool
	inApply, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	fsys := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if armed.Load() && op.Kind == errorfs.OpWriteAt && strings.HasSuffix(op.Path, ".img") {
			once.Do(func() { close(inApply) })
			<-proceed
		}
		return nil
	}))
	rcv, err := receiver.New(receiver.Options{Root: root, FS: fsys, AckBytes: 1 << 20, Now: time.Now,
		Authorize: func(receiver.Peer, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(6, 1))
	disk := &testkit.MemTarget{Kind: vmspec.KindDisk, Name: "vda", BlockSize: 64 << 10, Data: make([]byte, 8<<20)}
	ram := &testkit.MemTarget{Kind: vmspec.KindRAM, Name: "pc.ram", BlockSize: 4096, Data: make([]byte, 4<<20)}
	src := &testkit.MemSource{Targets: []*testkit.MemTarget{disk, ram}, DeviceState: []byte("not a migration stream")}
	testkit.RandomWrites(rng, disk, 20, 200<<10)
	snd, err := sender.New(sender.Options{VM: "app-1", Source: src, Dialer: testkit.PipeDialer(rcv, receiver.Peer{Fingerprint: "sha256:aa"}),
		Store: sender.Store{FS: vfs.Default, Dir: filepath.Join(dir, "state")}, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	if _, err := snd.RunEpoch(context.Background()); err != nil {
		t.Fatal(err)
	}
	src.Mutate(func() { testkit.RandomWrites(rng, disk, 20, 200<<10); testkit.RandomWrites(rng, ram, 20, 16<<10) })
	want := src.SourceState()
	armed.Store(true)
	sent := make(chan error, 1)
	go func() {
		_, err := snd.RunEpoch(context.Background())
		sent <- err
	}()
	select {
	case <-inApply:
	case err := <-sent:
		t.Fatalf("epoch 2 ended before its apply was held: %v", err)
	}

	opts := func(wait time.Duration, fence string) takeover.Options {
		return takeover.Options{Replica: repl, WorkDir: filepath.Join(dir, "work"), MainRAM: "pc.ram", LockWait: wait, Fence: fence}
	}
	// Held for longer than the takeover waits: refused, saying why.
	_, err = takeover.Prepare(opts(300*time.Millisecond, ""))
	if !errors.Is(err, replica.ErrLocked) || !strings.Contains(err.Error(), "the receiver") || !strings.Contains(err.Error(), "applying epoch 2") {
		t.Fatalf("takeover during an apply: %v, want a refusal naming the apply of epoch 2", err)
	}
	t.Logf("refused: %v", err)

	// Otherwise the takeover waits for the apply, then fences the new epoch.
	prepared := make(chan error, 1)
	go func() {
		_, err := takeover.Prepare(opts(30*time.Second, "test failover"))
		prepared <- err
	}()
	select {
	case err := <-prepared:
		t.Fatalf("the takeover did not wait for the apply: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	close(proceed)
	if err := <-sent; err != nil {
		t.Fatalf("epoch 2 after its apply went on: %v", err)
	}
	// The device state is not a real migration stream, so the takeover
	// stops when it parses it: after the lock, the fence and the epoch.
	if err := <-prepared; err == nil || !strings.Contains(err.Error(), "device state of epoch 2") {
		t.Fatalf("takeover after the apply: %v, want it to reach the device state of epoch 2", err)
	}
	mark, err := replica.TakenOver(vfs.Default, repl)
	if err != nil || mark == nil || mark.Epoch != 2 {
		t.Fatalf("takeover mark %+v (%v), want epoch 2", mark, err)
	}
	epoch, state, err := testkit.ReplicaState(vfs.Default, repl)
	if err != nil {
		t.Fatal(err)
	}
	if d := testkit.DiffStates(want, state); epoch != 2 || d != "" {
		t.Fatalf("replica at epoch %d after the takeover: %s", epoch, d)
	}
	if rep, err := replica.Verify(vfs.Default, repl, "app-1"); err != nil || !rep.OK() {
		t.Fatalf("verify: %v %v", err, rep)
	}
}
