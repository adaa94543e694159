package stripe

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"sync"
	"time"
)

// HelloSize is the length of a hello.
const HelloSize = 28

var magic = []byte("DRSTRIP1")

// Hello opens each connection of a striped stream.
type Hello struct {
	Session      [16]byte
	Index, Count uint8
}

// Marshal encodes h.
func (h Hello) Marshal() []byte {
	b := make([]byte, HelloSize)
	copy(b, magic)
	copy(b[8:], h.Session[:])
	b[24], b[25] = h.Index, h.Count
	return b
}

// IsHello reports whether b, the first bytes of a connection, begin a
// hello; it needs len(b) ≥ 8.
func IsHello(b []byte) bool { return len(b) >= len(magic) && bytes.Equal(b[:len(magic)], magic) }

// ParseHello decodes a hello.
func ParseHello(b []byte) (Hello, error) {
	var h Hello
	switch {
	case len(b) != HelloSize || !IsHello(b):
		return h, fmt.Errorf("stripe: not a hello: %w", ErrMalformed)
	case b[26] != 0 || b[27] != 0:
		return h, fmt.Errorf("stripe: hello with reserved bits set: %w", ErrMalformed)
	}
	copy(h.Session[:], b[8:24])
	h.Index, h.Count = b[24], b[25]
	if h.Count == 0 || int(h.Count) > MaxCount || h.Index >= h.Count {
		return h, fmt.Errorf("stripe: hello for connection %d of %d: %w", h.Index, h.Count, ErrMalformed)
	}
	return h, nil
}

// ReadHello reads the rest of a hello whose first bytes are first.
func ReadHello(first []byte, r io.Reader) (Hello, error) {
	b := make([]byte, HelloSize)
	n := copy(b, first)
	if _, err := io.ReadFull(r, b[n:]); err != nil {
		return Hello{}, fmt.Errorf("stripe: read hello: %w", err)
	}
	return ParseHello(b)
}

// Dial opens n connections with dial, sends each its hello and joins them.
// If any fails, those already open are closed.
func Dial(ctx context.Context, n int, dial func(ctx context.Context) (io.ReadWriteCloser, error), o Options) (*Conn, error) {
	if n < 1 || n > MaxCount {
		return nil, fmt.Errorf("stripe: %d connections, want 1 to %d", n, MaxCount)
	}
	var session [16]byte
	rand.Read(session[:])
	subs := make([]io.ReadWriteCloser, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := dial(ctx)
			if err != nil {
				errs[i] = err
				return
			}
			subs[i] = s
			if _, err := s.Write(Hello{Session: session, Index: uint8(i), Count: uint8(n)}.Marshal()); err != nil {
				errs[i] = fmt.Errorf("stripe: send hello on connection %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			for _, s := range subs {
				if s != nil {
					s.Close()
				}
			}
			return nil, fmt.Errorf("connection %d of %d: %w", i+1, n, err)
		}
	}
	return New(subs, o)
}

// Joiner gathers the connections of striped streams as a listener accepts
// them, and joins each stream's once all have arrived. A stream whose
// connections do not all arrive within Timeout is dropped. Connections
// join only connections of the same owner (the authenticated peer), so a
// session number learnt by someone else is worth nothing to them.
type Joiner struct {
	Options Options
	Timeout time.Duration // default 30s

	mu       sync.Mutex
	sessions map[joinKey]*session
}

type joinKey struct {
	owner   string
	session [16]byte
}

type session struct {
	subs    []io.ReadWriteCloser
	arrived int
	conn    *Conn
	err     error
	done    chan struct{} // closed when conn or err is set
}

// Join adds sub, whose hello h was read, to its stream, and waits until
// the stream is whole, ctx ends or Timeout passes. Every caller of a
// stream gets the same Conn; exactly one, the last to arrive, gets lead
// true and should serve the stream, while the others only keep their
// connections open until it is closed.
func (j *Joiner) Join(ctx context.Context, owner string, h Hello, sub io.ReadWriteCloser) (c *Conn, lead bool, err error) {
	key := joinKey{owner, h.Session}
	j.mu.Lock()
	if j.sessions == nil {
		j.sessions = map[joinKey]*session{}
	}
	s := j.sessions[key]
	if s == nil {
		s = &session{subs: make([]io.ReadWriteCloser, h.Count), done: make(chan struct{})}
		j.sessions[key] = s
	}
	switch {
	case int(h.Count) != len(s.subs):
		j.mu.Unlock()
		return nil, false, fmt.Errorf("stripe: connection %d says %d connections, its stream has %d: %w", h.Index, h.Count, len(s.subs), ErrMalformed)
	case s.subs[h.Index] != nil:
		j.mu.Unlock()
		return nil, false, fmt.Errorf("stripe: connection %d of the stream arrived twice: %w", h.Index, ErrMalformed)
	}
	s.subs[h.Index] = sub
	s.arrived++
	if s.arrived == len(s.subs) {
		delete(j.sessions, key)
		j.mu.Unlock()
		s.conn, s.err = New(s.subs, j.Options)
		close(s.done)
		return s.conn, s.err == nil, s.err
	}
	j.mu.Unlock()
	timeout := j.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.done:
		return s.conn, false, s.err
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
		err = fmt.Errorf("stripe: %d of %d connections arrived in %v", s.arrived, len(s.subs), timeout)
	}
	// Give up on the whole stream, unless it completed meanwhile.
	j.mu.Lock()
	if j.sessions[key] == s {
		delete(j.sessions, key)
		j.mu.Unlock()
		s.err = err
		close(s.done)
		return nil, false, err
	}
	j.mu.Unlock()
	<-s.done
	return s.conn, false, s.err
}
