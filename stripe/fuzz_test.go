package stripe

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

func FuzzParseHello(f *testing.F) {
	f.Add(Hello{Index: 1, Count: 2}.Marshal())
	f.Add([]byte("DRSTRIP1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHello(b)
		if err != nil {
			return
		}
		if !bytes.Equal(h.Marshal(), b) {
			t.Fatalf("hello %+v does not marshal back to its bytes", h)
		}
	})
}

// FuzzChunks feeds arbitrary bytes to a reader as one connection's chunks:
// it must end with data and io.EOF or an error, never hang or panic, and
// what it returns must be the data of chunks 0, 1, ... in order.
func FuzzChunks(f *testing.F) {
	chunk := func(seq uint64, data string) []byte {
		b := binary.BigEndian.AppendUint64(nil, seq)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	f.Add(append(append(chunk(1, "world"), chunk(0, "hello ")...), chunk(2, "")...))
	f.Add(chunk(0, "x"))
	f.Add(append(chunk(0, ""), chunk(1, "after")...))
	f.Add(append(chunk(5, "far"), 0xff))
	f.Fuzz(func(t *testing.T, in []byte) {
		x, y := net.Pipe()
		c, err := New([]io.ReadWriteCloser{y}, Options{MaxBuffered: 1 << 16, CloseWait: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		go func() { x.Write(in); x.Close() }()
		done := make(chan struct{})
		go func() {
			io.ReadAll(c)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			c.Close()
			t.Fatal("reader hung")
		}
		c.Close()
	})
}
