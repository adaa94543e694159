package e2e

import (
	"bufio"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// guestLike fills n bytes the way guest memory and disks look: a third
// zeros, a third text-like (compressible), a third random.
func guestLike(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	const chunk = 64 << 10
	words := []byte("the quick brown fox jumps over the lazy dog 0123456789 ")
	for off := 0; off < n; off += chunk {
		c := b[off:min(off+chunk, n)]
		switch rng.IntN(3) {
		case 0:
		case 1:
			for i := range c {
				c[i] = words[(i+off/7)%len(words)]
			}
		case 2:
			for i := range c {
				c[i] = byte(rng.Uint32())
			}
		}
	}
	return b
}

func memSource(size int) *testkit.MemSource {
	return &testkit.MemSource{Targets: []*testkit.MemTarget{
		{Kind: vmspec.KindDisk, Name: "vda", BlockSize: 64 << 10, Data: guestLike(size*3/4, 1)},
		{Kind: vmspec.KindRAM, Name: "pc.ram", BlockSize: 4096, Data: guestLike(size/4, 2)},
	}}
}

// BenchmarkSenderPipeline measures the sender's CPU stages on 64 MiB of
// guest-like data: planning (read + hash every block) and encoding the
// epoch's frames at each compression level, against a plain memory copy of
// the same bytes as the baseline.
func BenchmarkSenderPipeline(b *testing.B) {
	const size = 64 << 20
	src := memSource(size)
	snap, _ := src.Snapshot(context.Background())
	b.Run("baseline-memcopy", func(b *testing.B) {
		dst := make([]byte, size)
		b.SetBytes(size)
		for b.Loop() {
			for _, t := range src.Targets {
				copy(dst, t.Data)
			}
		}
	})
	b.Run("plan-hash", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if _, err := sender.BuildPlan(context.Background(), 1, snap, 0, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	plan, err := sender.BuildPlan(context.Background(), 1, snap, 0, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []wire.Compression{wire.CompressNone, wire.CompressFast, wire.CompressDefault} {
		b.Run("encode-"+c.String(), func(b *testing.B) {
			b.SetBytes(size)
			var wireBytes uint64
			for b.Loop() {
				enc := wire.NewEncoder(io.Discard, wire.EncoderOptions{Compression: c})
				for i := range plan.Items {
					f, err := plan.Frame(snap, i)
					if err != nil {
						b.Fatal(err)
					}
					if err := enc.Encode(f); err != nil {
						b.Fatal(err)
					}
				}
				wireBytes = enc.Stats().WireBytes
			}
			b.ReportMetric(float64(wireBytes)/float64(plan.Bytes), "wire/changed")
		})
	}
}

func quicPair(b *testing.B) (*transport.Listener, func(ctx context.Context) (io.ReadWriteCloser, error)) {
	srv, err := identityFor("srv")
	if err != nil {
		b.Fatal(err)
	}
	cli, err := identityFor("cli")
	if err != nil {
		b.Fatal(err)
	}
	l, err := transport.Listen("127.0.0.1:0", tlsid.ServerTLS(srv, tlsid.Trust{Fingerprints: []string{cli.Fingerprint}}), transport.DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	ctls := tlsid.ClientTLS(cli, tlsid.Trust{Fingerprints: []string{srv.Fingerprint}})
	dial := func(ctx context.Context) (io.ReadWriteCloser, error) {
		c, err := transport.Dial(ctx, l.Addr().String(), ctls, transport.DefaultOptions())
		if err != nil {
			return nil, err
		}
		s, err := c.OpenStream(ctx)
		if err != nil {
			return nil, err
		}
		return closeBoth{s, c}, nil
	}
	return l, dial
}

type closeBoth struct {
	transport.Stream
	c *transport.Conn
}

func (c closeBoth) Close() error { c.Stream.Close(); return c.c.Close(0, "") }

func identityFor(name string) (tlsid.Identity, error) {
	dir, err := os.MkdirTemp("", "drsync-bench-")
	if err != nil {
		return tlsid.Identity{}, err
	}
	defer os.RemoveAll(dir)
	return tlsid.WriteIdentity(dir, name)
}

// BenchmarkLoopbackTransfer replicates a 128 MiB first epoch (all of it
// changed) over loopback QUIC into a replica on disk, against the baseline
// of pushing the same number of bytes through a bare QUIC stream of the
// same transport. Reports MB/s of changed data and bytes on the wire per
// changed byte.
func BenchmarkLoopbackTransfer(b *testing.B) {
	const size = 128 << 20
	b.Run("baseline-quic-stream", func(b *testing.B) {
		l, dial := quicPair(b)
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept(context.Background())
				if err != nil {
					return
				}
				s, err := c.AcceptStream(context.Background())
				if err != nil {
					return
				}
				go func() { io.Copy(io.Discard, s); s.Write([]byte{1}); s.Close() }()
			}
		}()
		buf := make([]byte, 1<<20)
		b.SetBytes(size)
		for b.Loop() {
			rw, err := dial(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			w := bufio.NewWriter(rw)
			for n := 0; n < size; n += len(buf) {
				w.Write(buf)
			}
			w.Flush()
			rw.(closeBoth).Stream.Close()
			io.ReadFull(rw, buf[:1])
			rw.Close()
		}
	})
	b.Run("drsync-epoch", func(b *testing.B) {
		l, dial := quicPair(b)
		defer l.Close()
		b.SetBytes(size)
		var wireB, dataB uint64
		for b.Loop() {
			b.StopTimer()
			dir := b.TempDir()
			rcv, err := receiver.New(receiver.Options{Root: dir + "/replicas", FS: vfs.Default, Authorize: func(receiver.Peer, string) error { return nil }, Now: time.Now})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				for {
					c, err := l.Accept(ctx)
					if err != nil {
						return
					}
					s, err := c.AcceptStream(ctx)
					if err != nil {
						return
					}
					go rcv.Handle(ctx, receiver.Peer{Fingerprint: c.Peer().Fingerprint}, s)
				}
			}()
			s, err := sender.New(sender.Options{VM: "bench", Source: memSource(size), Dialer: sender.DialFunc(dial), Store: sender.Store{FS: vfs.Default, Dir: dir + "/state"}, Compression: wire.CompressFast, Now: time.Now})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			res, err := s.RunEpoch(ctx)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			wireB, dataB = res.WireBytes, res.DataBytes
			s.Close()
			cancel()
			b.StartTimer()
		}
		b.ReportMetric(float64(wireB)/float64(dataB), "wire/changed")
	})
}
