package serve

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/drsync/drsync/internal/jsonfile"
	"github.com/drsync/drsync/metrics"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/stripe"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/warmset"
)

const (
	// LockFile in the storage directory keeps a second receiver off the
	// same replicas.
	LockFile = ".drsync-receiver.lock"
	// StatusFile, in <storage dir>/<vm>/, is the receiver's record of the
	// VM, written after every committed epoch. "drsync status" reads it
	// while the receiver runs, so it is always replaced atomically.
	StatusFile = "STATUS.json"
	// streamWait bounds how long an admitted connection may take to open
	// its stream; a sender opens it immediately.
	streamWait = 30 * time.Second
	// errorGrace is how long a refused sender gets to read the Error frame
	// telling it why, before its connection is closed.
	errorGrace = 2 * time.Second
)

// ErrLockBusy is a storage directory another receiver holds.
var ErrLockBusy = errors.New("storage directory in use")

// Options configure a Server.
type Options struct {
	// Listen is the UDP host:port to listen on; TLS verifies the senders.
	Listen    string
	TLS       *tls.Config
	Transport transport.Options
	// StorageDir holds one replica directory per VM, or with Store only
	// the receiver's lock and status files.
	StorageDir string
	// Store keeps the replicas; if nil, Open opens the one Backend names
	// (files under StorageDir by default).
	Store   replica.Store
	Backend Backend
	// Authorize, AckBytes and KeepPoints are the receiver's (package
	// receiver).
	Authorize  func(p receiver.Peer, vm string) error
	AckBytes   uint64
	KeepPoints int
	// WarmPages keeps the pages written in recent epochs in memory, at
	// most WarmMaxBytes (0: the keeper's default), for a fast failover.
	WarmPages    bool
	WarmMaxBytes int64
	// VMs are the replicas the receiver expects; with Metrics, the lag of
	// each carries on from its status file.
	VMs     []string
	Metrics *metrics.Receiver // nil: none
	// Drills, with Metrics, reads the outcome of each replica's last
	// failover drill.
	Drills func() map[string]metrics.Drill
	Now    func() time.Time
	Logger *slog.Logger
	// Fingerprint (the receiver's own) and Senders (how many are
	// configured) are logged when listening starts.
	Fingerprint string
	Senders     int
	// Listening, if set, is told the bound address.
	Listening func(net.Addr)
}

// Validate checks o and fills in defaults.
func (o *Options) Validate() error {
	if o.Listen == "" {
		return errors.New("no listen address")
	}
	if o.TLS == nil {
		return errors.New("no TLS configuration")
	}
	if o.StorageDir == "" {
		return errors.New("no storage directory")
	}
	if o.Authorize == nil {
		return errors.New("no authorization")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// ListenError is a listen address that cannot be bound.
type ListenError struct {
	Addr string
	Err  error
}

func (e *ListenError) Error() string { return fmt.Sprintf("listen on %s: %v", e.Addr, e.Err) }
func (e *ListenError) Unwrap() error { return e.Err }

// Server is the receiver's daemon: it holds the storage lock from Open
// to Close.
type Server struct {
	o          Options
	unlock     func()
	closeStore func()
	status     *statusWriter
}

// Open locks the storage directory and loads what the status files say,
// so that the metrics can be served before Run.
func Open(o Options) (*Server, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	unlock, err := lockStorage(o.StorageDir)
	if err != nil {
		return nil, err
	}
	closeStore := func() {}
	if o.Store == nil {
		if o.Store, closeStore, err = o.Backend.openStore(o.KeepPoints, o.Logger); err != nil {
			unlock()
			return nil, err
		}
	}
	s := &Server{o: o, unlock: unlock, closeStore: closeStore, status: &statusWriter{dir: o.StorageDir, log: o.Logger, now: o.Now, byVM: map[string]*Status{}}}
	if met := o.Metrics; met != nil {
		met.Storage(o.StorageDir)
		if o.Drills != nil {
			met.Drills(o.Drills)
		}
		met.GroupPoints(groupPoints(s.Store(), o.VMs))
		// The lag of each replica carries on from its status file.
		s.status.mu.Lock()
		for _, vm := range o.VMs {
			if st, _ := s.status.load(vm); !st.Cut.IsZero() {
				met.Restored(vm, st.Cut)
			}
		}
		s.status.mu.Unlock()
	}
	return s, nil
}

// Close releases the storage lock.
func (s *Server) Close() { s.closeStore(); s.unlock() }

// Store is the store the server keeps the replicas in, for readers beside
// it (the status page).
func (s *Server) Store() replica.Store {
	if s.o.Store != nil {
		return s.o.Store
	}
	return replica.FileStore{FS: vfs.Default, Root: s.o.StorageDir, Now: s.o.Now, Logger: s.o.Logger}
}

// Run finishes whatever a crash left half-applied, then serves senders
// until ctx ends. Each replica is left at a committed epoch.
func (s *Server) Run(ctx context.Context) error {
	o, log, status, met := s.o, s.o.Logger, s.status, s.o.Metrics
	var keeper *warmset.Keeper
	if o.WarmPages {
		keeper = warmset.NewKeeper(warmset.Options{MaxBytes: o.WarmMaxBytes}, log)
		defer keeper.Close()
	}
	onCommit := func(s receiver.EpochStats) {
		status.commit(s)
		if met != nil {
			met.Committed(s.VM, s.Cut, s.WireBytes, s.RawBytes)
		}
		if keeper != nil {
			hot := keeper.Commit(s.VM, warmBlocks(s))
			status.hot(s.VM, hot)
			if met != nil {
				met.HotSet(s.VM, hot)
			}
		}
	}
	rcv, err := receiver.New(receiver.Options{
		Root:       o.StorageDir,
		FS:         vfs.Default,
		Store:      o.Store,
		Authorize:  o.Authorize,
		AckBytes:   o.AckBytes,
		Now:        o.Now,
		Logger:     log,
		OnCommit:   onCommit,
		KeepPoints: o.KeepPoints,
		OnError:    status.fail,
	})
	if err != nil {
		return err
	}
	if err := rcv.RecoverAll(); err != nil {
		return fmt.Errorf("recover the replicas under %s: %w", o.StorageDir, err)
	}
	l, err := transport.Listen(o.Listen, o.TLS, o.Transport)
	if err != nil {
		return &ListenError{o.Listen, err}
	}
	defer l.Close()
	log.Info("listening", "addr", l.Addr().String(), "storage", o.StorageDir, "fingerprint", o.Fingerprint, "senders", o.Senders)
	if o.Listening != nil {
		o.Listening(l.Addr())
	}

	var wg sync.WaitGroup
	var acceptErr error
	joiner := &stripe.Joiner{Options: stripe.Options{ClosedByPeer: transport.ClosedByPeer}} // gathers the connections of striped streams
	for {
		conn, err := l.Accept(ctx)
		if err != nil {
			if ctx.Err() == nil {
				acceptErr = fmt.Errorf("accept connections: %w", err)
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveConn(ctx, rcv, joiner, conn, log)
		}()
	}
	l.Close()
	// Handle returns promptly once ctx ends, leaving each replica at a
	// committed epoch with its staged data synced.
	wg.Wait()
	log.Info("stopped")
	return acceptErr
}

// serveConn serves the one stream of an admitted connection.
func serveConn(ctx context.Context, rcv *receiver.Receiver, joiner *stripe.Joiner, conn *transport.Conn, log *slog.Logger) {
	defer conn.Close(0, "")
	// Closing the stream ends only our side of it; closing the connection
	// also unblocks a Handle waiting for the sender, so shutdown is prompt.
	stop := context.AfterFunc(ctx, func() { conn.Close(0, "receiver shutting down") })
	defer stop()
	p := conn.Peer()
	peer := receiver.Peer{Fingerprint: p.Fingerprint, Name: p.CommonName}
	log = log.With("remote", conn.RemoteAddr().String(), "peer_name", p.CommonName)
	actx, cancel := context.WithTimeout(ctx, streamWait)
	s, err := conn.AcceptStream(actx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("connection opened no stream", "err", err)
		}
		return
	}
	cs := transport.NewStreamConn(s, conn, 0)
	// A striped stream starts with a hello on each of its connections; a
	// plain one with the sender's first frame.
	s.SetReadDeadline(time.Now().Add(streamWait))
	first := make([]byte, 8)
	if _, err := io.ReadFull(s, first); err != nil {
		if ctx.Err() == nil {
			log.Warn("connection sent nothing", "err", err)
		}
		return
	}
	s.SetReadDeadline(time.Time{})
	var rw io.ReadWriteCloser = &peekedStream{Reader: io.MultiReader(bytes.NewReader(first), s), StreamConn: cs}
	if stripe.IsHello(first) {
		h, err := stripe.ReadHello(first, s)
		if err != nil {
			log.Warn("bad striped connection", "err", err)
			return
		}
		sc, lead, err := joiner.Join(ctx, p.Fingerprint, h, cs)
		if err != nil {
			log.Warn("striped stream incomplete", "err", err, "connection", h.Index, "of", h.Count)
			return
		}
		if !lead {
			// Another connection's goroutine serves the stream; keep this
			// one open until the stream ends.
			select {
			case <-sc.Done():
			case <-ctx.Done():
				return
			}
			// The last chunks this side wrote (a refusal, an Error frame)
			// may still be in this connection's buffers, which closing it
			// discards: unless the sender has ended the stream (the
			// normal end, once it has read them), wait, as below, for
			// the sender to close the connection.
			select {
			case <-sc.PeerEnded():
			default:
				awaitSender(s, conn)
			}
			return
		}
		defer sc.Close()
		rw = sc
	}
	if err := rcv.Handle(ctx, peer, rw); err != nil {
		// Handle has told the sender why in an Error frame (and logged
		// it); closing the connection right away could drop that frame,
		// even when the sender has already ended its side of the stream.
		// The sender closes the connection once it has read the frame.
		awaitSender(s, conn)
	}
}

// awaitSender keeps conn open, at most errorGrace, until the sender
// closes it, discarding what the sender still sends on s: closing it
// first would discard what is in flight to the sender. (A sender may
// end its side of the stream before it has read the reply, so that is
// not enough.)
func awaitSender(s transport.Stream, conn *transport.Conn) {
	deadline := time.Now().Add(errorGrace)
	for {
		s.SetReadDeadline(deadline)
		_, err := io.Copy(io.Discard, s)
		// The stream's own Close sets a read deadline of now, perhaps
		// only after the one above: that one still holds.
		var ne net.Error
		if err != nil && errors.As(err, &ne) && ne.Timeout() && time.Now().Before(deadline) {
			continue
		}
		break
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-conn.Done():
	case <-t.C:
	}
}

// peekedStream is a connection's stream whose first bytes were read to
// tell a striped stream from a plain one.
type peekedStream struct {
	io.Reader
	*transport.StreamConn
}

func (p *peekedStream) Read(b []byte) (int, error) { return p.Reader.Read(b) }

// lockStorage takes an exclusive lock on the storage directory, so that two
// receivers never apply epochs to the same replicas. The lock is released
// when the returned function is called or the process ends.
func lockStorage(dir string) (func(), error) {
	if err := vfs.Default.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create storage directory: %w", err)
	}
	name := filepath.Join(dir, LockFile)
	// The note, our pid, is only a hint for the message below.
	l, err := vfs.Default.Lock(name, strconv.Itoa(os.Getpid()))
	if err != nil {
		var le *vfs.LockedError
		if errors.As(err, &le) {
			who := "another drsync receive"
			if le.Note != "" {
				who += " (pid " + le.Note + ")"
			}
			return nil, fmt.Errorf("%w: %s holds %s; stop it, or give this receiver its own storage.dir", ErrLockBusy, who, name)
		}
		return nil, err
	}
	return func() { l.Unlock() }, nil
}

// statusWriter maintains <storage dir>/<vm>/STATUS.json.
type statusWriter struct {
	dir  string // storage
	log  *slog.Logger
	now  func() time.Time
	mu   sync.Mutex
	byVM map[string]*Status
}

// commit implements receiver.Options.OnCommit. A status that cannot be
// written is logged, never fatal: the replica itself is already committed.
// load returns the in-memory status of vm, read from its file the first
// time so totals carry on from the previous run.
func (w *statusWriter) load(vm string) (*Status, string) {
	path := filepath.Join(w.dir, vm, StatusFile)
	st := w.byVM[vm]
	if st == nil {
		st = &Status{}
		if err := jsonfile.Read(path, st); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				w.log.Warn("previous status unreadable; totals restart from zero", "vm", vm, "err", err)
			}
			st = &Status{}
		}
		w.byVM[vm] = st
	}
	return st, path
}

func (w *statusWriter) commit(s receiver.EpochStats) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, path := w.load(s.VM)
	now := w.now().UTC()
	st.VM = s.VM
	st.Epoch = s.Epoch
	st.Cut = s.Cut.UTC()
	st.CommittedAt = now
	st.BytesReceived += s.WireBytes
	st.RawBytes += s.RawBytes
	st.Epochs++
	st.LastPeer = &PeerInfo{Fingerprint: s.Peer.Fingerprint, Name: s.Peer.Name}
	st.LastError, st.LastErrorAt = "", time.Time{}
	st.Updated = now
	if err := jsonfile.WriteAtomic(path, st); err != nil {
		w.log.Warn("cannot write receiver status", "vm", s.VM, "err", err)
	}
}

// hot records the size of vm's hot set.
func (w *statusWriter) hot(vm string, bytes int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, path := w.load(vm)
	st.HotSetBytes = bytes
	if err := jsonfile.WriteAtomic(path, st); err != nil {
		w.log.Warn("cannot write receiver status", "vm", vm, "err", err)
	}
}

// warmBlocks converts an epoch's RAM writes for the keeper.
func warmBlocks(s receiver.EpochStats) []warmset.BlockEpoch {
	var out []warmset.BlockEpoch
	for _, r := range s.RAM {
		b := warmset.BlockEpoch{Name: r.Name, File: r.File, Size: r.Size}
		for _, w := range r.Written {
			b.Written = append(b.Written, warmset.Run{First: w.First, Count: w.Count})
		}
		out = append(out, b)
	}
	return out
}

// fail records why a connection writing vm failed.
func (w *statusWriter) fail(vm string, peer receiver.Peer, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, path := w.load(vm)
	now := w.now().UTC()
	st.VM = vm
	st.LastPeer = &PeerInfo{Fingerprint: peer.Fingerprint, Name: peer.Name}
	st.LastError, st.LastErrorAt = err.Error(), now
	st.Updated = now
	if werr := jsonfile.WriteAtomic(path, st); werr != nil {
		w.log.Warn("cannot write receiver status", "vm", vm, "err", werr)
	}
}

// ResetKey derives the QUIC stateless-reset secret from the receiver's
// private key: stable across restarts, unknown to anyone without the key.
func ResetKey(id tlsid.Identity) *[32]byte {
	der, err := x509.MarshalPKCS8PrivateKey(id.Cert.PrivateKey)
	if err != nil {
		return nil
	}
	k := sha256.Sum256(append([]byte("drsync stateless reset v1\x00"), der...))
	return &k
}
