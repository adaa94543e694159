package receiver_test

import (
	"bufio"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// rawSession opens a connection to rcv, says Hello for vm and returns the
// encoder, the decoder and the Welcome.
func rawSession(t *testing.T, rcv *receiver.Receiver, vm string) (net.Conn, *wire.Encoder, *bufio.Writer, *wire.Decoder, *wire.Welcome, chan error) {
	t.Helper()
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- rcv.Handle(context.Background(), alice, b) }()
	bw := bufio.NewWriter(a)
	enc := wire.NewEncoder(bw, wire.EncoderOptions{})
	dec := wire.NewDecoder(a, wire.DecoderOptions{})
	if err := enc.Encode(&wire.Hello{MinVersion: 1, MaxVersion: 1, VM: vm}); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	f, err := dec.Decode()
	if err != nil {
		t.Fatal(err)
	}
	w, ok := f.(*wire.Welcome)
	if !ok {
		t.Fatalf("got %v", f)
	}
	return a, enc, bw, dec, w, done
}

// TestBadFramesLeaveReplicaUntouched sends, after a committed epoch, an
// epoch that breaks a rule in some way; each time the receiver answers with
// an Error naming the problem, closes the connection, and the replica is
// byte for byte what it was.
func TestBadFramesLeaveReplicaUntouched(t *testing.T) {
	rfs := memfs.New()
	rcv := newReceiver(t, rfs)
	src := newSource(rand.New(rand.NewPCG(4, 4)))
	s := newSender(t, src, testkit.PipeDialer(rcv, alice), memfs.New())
	if _, err := s.RunEpoch(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, before, err := testkit.ReplicaState(rfs, "/replicas/web-1")
	if err != nil {
		t.Fatal(err)
	}
	targets := []wire.Target{{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: 8<<20 + 512, BlockSize: 64 << 10}, {ID: 1, Kind: vmspec.KindRAM, Name: "pc.ram", Size: 4 << 20, BlockSize: 4096}}
	begin := &wire.EpochBegin{Epoch: 2, Items: 2, Bytes: 65536, Targets: targets}
	extent := &wire.DiskExtent{Seq: 0, Target: 0, Offset: 0, Data: make([]byte, 65536)}
	for _, tc := range []struct {
		name   string
		frames []wire.Frame
		raw    []byte // sent after frames
		want   string
	}{
		{"garbage bytes", []wire.Frame{begin}, []byte("this is not a frame at all, not even close"), "malformed"},
		{"item out of order", []wire.Frame{begin, &wire.ZeroRun{Seq: 1, Target: 0, Offset: 0, Length: 65536}}, nil, "out of order"},
		{"more items than the targets hold", []wire.Frame{&wire.EpochBegin{Epoch: 2, Items: 1 << 40, Bytes: 65536, Targets: targets}}, nil, "announces 1099511627776 items"},
		{"more bytes than the targets hold", []wire.Frame{&wire.EpochBegin{Epoch: 2, Items: 2, Bytes: 1 << 50, Targets: targets}}, nil, "announces 1125899906842624 payload bytes"},
		{"wrong epoch", []wire.Frame{&wire.EpochBegin{Epoch: 7, Items: 0, Targets: targets}}, nil, "expects 2"},
		{"commit with wrong digest", []wire.Frame{begin, extent, &wire.ZeroRun{Seq: 1, Target: 1, Offset: 0, Length: 4096}, &wire.EpochCommit{Epoch: 2, Items: 2, Digest: 1}}, nil, "digest"},
		{"extent outside the disk", []wire.Frame{begin, &wire.DiskExtent{Seq: 0, Target: 0, Offset: 16 << 20, Data: make([]byte, 65536)}}, nil, "outside target"},
		{"frame from the wrong side", []wire.Frame{&wire.Welcome{Version: 1}}, nil, "expected EpochBegin"},
		{"unknown target", []wire.Frame{begin, &wire.DiskExtent{Seq: 0, Target: 9, Offset: 0, Data: make([]byte, 65536)}}, nil, "unknown target 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, enc, bw, dec, _, done := rawSession(t, rcv, "web-1")
			defer conn.Close()
			go func() {
				for _, f := range tc.frames {
					enc.Encode(f)
				}
				bw.Write(tc.raw)
				bw.Flush()
			}()
			var got *wire.Error
			for {
				f, err := dec.Decode()
				if err != nil {
					break
				}
				if e, ok := f.(*wire.Error); ok {
					got = e
					break
				}
			}
			if got == nil || !strings.Contains(got.Message, tc.want) {
				t.Fatalf("receiver answered %v, want an Error mentioning %q", got, tc.want)
			}
			if err := <-done; err == nil {
				t.Fatal("Handle returned no error")
			}
			_, after, err := testkit.ReplicaState(rfs, "/replicas/web-1")
			if err != nil {
				t.Fatal(err)
			}
			if d := testkit.DiffStates(before, after); d != "" {
				t.Fatalf("replica changed: %s", d)
			}
		})
	}
}

// TestDiskFull: the receiver's storage fills up during an epoch; the sender
// gets an error that says so, the replica stays at its committed epoch, and
// once space is available the epoch completes.
func TestDiskFull(t *testing.T) {
	rfs := memfs.New()
	rng := rand.New(rand.NewPCG(8, 8))
	src := newSource(rng)
	var reported []error
	rcv, err := receiver.New(receiver.Options{Root: "/replicas", FS: rfs, Authorize: allowAll, Now: now,
		OnError: func(vm string, _ receiver.Peer, err error) { reported = append(reported, err) }})
	if err != nil {
		t.Fatal(err)
	}
	s := newSender(t, src, testkit.PipeDialer(rcv, alice), memfs.New())
	defer s.Close()
	if _, err := s.RunEpoch(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, before, _ := testkit.ReplicaState(rfs, "/replicas/web-1")
	src.Mutate(func() {
		testkit.RandomWrites(rng, src.Targets[0], 40, 200<<10)
	})
	want := src.SourceState()
	rfs.SetCapacity(rfs.Used() + 1<<20)
	s.Disconnect()
	_, err = s.RunEpoch(context.Background())
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.ErrStorage || !strings.Contains(err.Error(), syscall.ENOSPC.Error()) {
		t.Fatalf("disk full: got %v, want a storage error saying %q", err, syscall.ENOSPC)
	}
	t.Logf("sender saw: %v", err)
	if len(reported) != 1 || !errors.Is(reported[0], syscall.ENOSPC) {
		t.Fatalf("OnError got %v, want one ENOSPC", reported)
	}
	epoch, state, err := testkit.ReplicaState(rfs, "/replicas/web-1")
	if err != nil || epoch != 1 || testkit.DiffStates(before, state) != "" {
		t.Fatalf("after disk full: epoch %d err %v diff %q", epoch, err, testkit.DiffStates(before, state))
	}
	checkReplica(t, rfs, before, 1)
	rfs.SetCapacity(0)
	s.Disconnect()
	if _, err := s.RunEpoch(context.Background()); err != nil {
		t.Fatalf("after space was freed: %v", err)
	}
	checkReplica(t, rfs, want, 2)
}

// TestReconnectTakesOver: a sender whose old connection is still open on
// the receiver (it died without closing it) takes over the VM at once when
// it reconnects with the same identity; another identity is refused.
func TestReconnectTakesOver(t *testing.T) {
	rfs := memfs.New()
	rcv := newReceiver(t, rfs)
	old, enc, bw, _, w, oldDone := rawSession(t, rcv, "web-1")
	defer old.Close()
	if w.Position.Committed != 0 {
		t.Fatalf("welcome %+v", w.Position)
	}
	enc.Encode(&wire.EpochBegin{Epoch: 1, Items: 5, Bytes: 5 * 65536, Targets: []wire.Target{{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: 1 << 20, BlockSize: 65536}}})
	bw.Flush()

	// Another identity is refused while the VM is held.
	bob := receiver.Peer{Fingerprint: "sha256:bb"}
	a, b := net.Pipe()
	go rcv.Handle(context.Background(), bob, b)
	benc := wire.NewEncoder(a, wire.EncoderOptions{})
	go benc.Encode(&wire.Hello{MinVersion: 1, MaxVersion: 1, VM: "web-1"})
	f, err := wire.NewDecoder(a, wire.DecoderOptions{}).Decode()
	if e, ok := f.(*wire.Error); err != nil || !ok || e.Code != wire.ErrBusy {
		t.Fatalf("other identity: got %v %v, want busy", f, err)
	}
	a.Close()

	// The same identity takes over: the old connection is closed.
	conn, _, _, _, w2, _ := rawSession(t, rcv, "web-1")
	defer conn.Close()
	if err := <-oldDone; err != nil && !strings.Contains(err.Error(), "closed") {
		t.Logf("old session ended with %v", err)
	}
	if w2.Position.Committed != 0 {
		t.Fatalf("welcome after takeover: %+v", w2.Position)
	}
}

// TestDiskFullAtReservation: the journal fits but the space to apply the
// epoch does not; the commit is refused before its record is written, the
// replica stays at its epoch, and the fully staged epoch commits without
// being sent again once space is freed.
func TestDiskFullAtReservation(t *testing.T) {
	rfs := memfs.New()
	rng := rand.New(rand.NewPCG(12, 12))
	src := newSource(rng)
	rcv := newReceiver(t, rfs)
	s := newSender(t, src, testkit.PipeDialer(rcv, alice), memfs.New())
	defer s.Close()
	if _, err := s.RunEpoch(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, before, _ := testkit.ReplicaState(rfs, "/replicas/web-1")
	// Fresh data in a range of the disk that was never written (holes),
	// so applying it needs new space.
	src.Mutate(func() {
		d := src.Targets[0].Data
		for i := 6 << 20; i < 8<<20; i++ {
			d[i] = byte(i * 31)
		}
	})
	want := src.SourceState()
	// Room for the journal (2 MiB of data plus framing), not for the image.
	rfs.SetCapacity(rfs.Used() + 3<<20)
	s.Disconnect()
	_, err := s.RunEpoch(context.Background())
	if err == nil || !strings.Contains(err.Error(), "reserve") {
		t.Fatalf("got %v, want a failure to reserve space", err)
	}
	checkReplica(t, rfs, before, 1)
	rfs.SetCapacity(0)
	s.Disconnect()
	res, err := s.RunEpoch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.StartSeq != uint64(res.Items) {
		t.Errorf("resumed at item %d of %d: the staged epoch should only need its commit", res.StartSeq, res.Items)
	}
	checkReplica(t, rfs, want, 2)
}
