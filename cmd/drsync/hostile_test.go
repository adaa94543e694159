package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/wire"
)

// startReceiver runs `drsync receive` in-process on a port the kernel picks,
// trusting fpSender for web-1, and returns its address. It stops when the
// test ends.
func startReceiver(t *testing.T, dir, fpSender string, vms ...string) net.Addr {
	t.Helper()
	if len(vms) == 0 {
		vms = []string{"web-1"}
	}
	quoted := make([]string, len(vms))
	for i, v := range vms {
		quoted[i] = strconv.Quote(v)
	}
	conf := filepath.Join(dir, "receiver.toml")
	writeFile(t, conf, []byte(fmt.Sprintf(`
listen = "127.0.0.1:0"
[identity]
cert = "keys/site-b.crt"
key = "keys/site-b.key"
[storage]
dir = "replicas"
[[sender]]
name = "site-a"
fingerprint = %q
vms = [%s]
`, fpSender, strings.Join(quoted, ", "))))
	addr, _ := runReceiver(t, conf)
	return addr
}

// runReceiver runs "drsync receive --config conf" in this process until
// the test ends or stop is called, and returns the address it listens on;
// stop returns its exit code. Its log is shown if the test fails.
func runReceiver(t *testing.T, conf string) (addr net.Addr, stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan net.Addr, 1)
	done := make(chan int, 1)
	var logs hosttools.SyncBuffer
	go func() {
		e := &env{stdout: &logs, stderr: &logs, now: time.Now, listening: func(a net.Addr) { addrs <- a }}
		done <- runEnv(ctx, e, []string{"receive", "--config", conf, "--log-level", "debug"})
	}()
	code, stopped := -1, false
	stop = func() int {
		if stopped {
			return code
		}
		stopped = true
		cancel()
		select {
		case code = <-done:
		case <-time.After(10 * time.Second):
			t.Error("receiver did not stop")
		}
		return code
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("receiver log:\n%s", logs.String())
		}
	})
	select {
	case a := <-addrs:
		return a, stop
	case code = <-done:
		stopped = true
		t.Fatalf("receive exited with %d:\n%s", code, logs.String())
	case <-time.After(10 * time.Second):
		t.Fatal("receiver did not start listening")
	}
	return nil, stop
}

// TestErrorFrameReachesHalfClosedSender: a sender that ends its side of
// the stream right after a bad frame still gets the receiver's Error frame
// naming the problem, rather than a connection closed without a word.
func TestErrorFrameReachesHalfClosedSender(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	fpSender := keygen(t, keys, "site-a")
	fpReceiver := keygen(t, keys, "site-b")
	addr := startReceiver(t, dir, fpSender)

	id, err := tlsid.LoadIdentity(filepath.Join(keys, "site-a.crt"), filepath.Join(keys, "site-a.key"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		bad  []byte // sent after a Hello, then the stream is closed
		want string
	}{
		{"garbage", []byte("this is not a frame at all, not even close"), "malformed"},
		{"frame out of order", encodeFrames(t, &wire.Welcome{Version: 1}), "expected EpochBegin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := transport.Dial(ctx, addr.String(), tlsid.ClientTLS(id, tlsid.Trust{Fingerprints: []string{fpReceiver}}), transport.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(0, "")
			s, err := conn.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			msg := append(encodeFrames(t, &wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.Version, VM: "web-1"}), tc.bad...)
			if _, err := s.Write(msg); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil { // FIN right behind the bad frame
				t.Fatal(err)
			}
			s.SetReadDeadline(time.Now().Add(10 * time.Second))
			dec := wire.NewDecoder(bufio.NewReader(s), wire.DecoderOptions{})
			var got []string
			for {
				f, err := dec.Decode()
				if err != nil {
					t.Fatalf("after %v: %v; want an Error frame saying %q", got, err, tc.want)
				}
				got = append(got, f.Type().String())
				if e, ok := f.(*wire.Error); ok {
					if e.Code != wire.ErrProtocol || !strings.Contains(e.Message, tc.want) {
						t.Fatalf("Error frame %v %q, want protocol error saying %q", e.Code, e.Message, tc.want)
					}
					return
				}
			}
		})
	}
}

func encodeFrames(t *testing.T, fs ...wire.Frame) []byte {
	t.Helper()
	var b strings.Builder
	w := bufio.NewWriter(&b)
	enc := wire.NewEncoder(w, wire.EncoderOptions{})
	for _, f := range fs {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
	return []byte(b.String())
}
