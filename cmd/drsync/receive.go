package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/drsync/drsync/metrics"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/stripe"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/warmset"
)

const (
	// receiverLockFile in the storage directory keeps a second receiver
	// off the same replicas.
	receiverLockFile = ".drsync-receiver.lock"
	// streamWait bounds how long an admitted connection may take to open
	// its stream; a sender opens it immediately.
	streamWait = 30 * time.Second
	// errorGrace is how long a refused sender gets to read the Error frame
	// telling it why, before its connection is closed.
	errorGrace = 2 * time.Second
)

func receiveCommand() *command {
	var configPath string
	var lf logFlags
	c := &command{
		name:  "receive",
		short: "accept epochs from senders and keep the replicas (daemon)",
		args:  "--config FILE [--log-level LEVEL] [--log-json]",
		summary: `Keep the replicas of the VMs that the configured senders send.
Validates the configuration, locks the storage directory, finishes whatever
a crash left half-applied, then listens (QUIC, mutual TLS) until SIGINT or
SIGTERM. Writes <storage dir>/<vm>/STATUS.json after every committed epoch.`,
		flags: func(set *flag.FlagSet) {
			set.StringVar(&configPath, "config", "", "receiver configuration file (required)")
			lf.register(set)
		},
	}
	c.run = func(ctx context.Context, e *env, _ *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if configPath == "" {
			return usagef("--config is required")
		}
		log, err := lf.logger(e.stderr)
		if err != nil {
			return err
		}
		cfg, err := loadReceiverConfig(configPath)
		if err != nil {
			return err
		}
		return receive(ctx, e, cfg, log)
	}
	return c
}

func receive(ctx context.Context, e *env, cfg *ReceiverConfig, log *slog.Logger) error {
	// Everything the configuration names is loaded before anything starts,
	// so a mistake is reported at once rather than at the first connection.
	id, err := cfg.Identity.load(cfg.file)
	if err != nil {
		return err
	}
	trust, err := cfg.trust()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	unlock, err := lockStorage(cfg.Storage.Dir)
	if err != nil {
		return err
	}
	defer unlock()

	status := &receiverStatusWriter{cfg: cfg, log: log, now: e.now, byVM: map[string]*receiverStatus{}}
	var met *metrics.Receiver
	if cfg.Metrics != "" {
		met = metrics.NewReceiver(e.now)
		met.Storage(cfg.Storage.Dir)
		met.Drills(func() map[string]metrics.Drill { return drillResults(vfs.Default, cfg.Storage.Dir) })
		// The lag of each replica carries on from its status file.
		status.mu.Lock()
		for _, vm := range cfg.vmNames() {
			if st, _ := status.load(vm); !st.Cut.IsZero() {
				met.Restored(vm, st.Cut)
			}
		}
		status.mu.Unlock()
		if err := serveMetrics(ctx, cfg.file, cfg.Metrics, met.Handler(), receiverPage(e, cfg), log); err != nil {
			return err
		}
	}
	var keeper *warmset.Keeper
	if cfg.Storage.warm() {
		keeper = warmset.NewKeeper(warmset.Options{MaxBytes: int64(cfg.Storage.WarmMax)}, log)
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
		Root:       cfg.Storage.Dir,
		FS:         vfs.Default,
		Authorize:  newAuthorizer(cfg).authorize,
		AckBytes:   uint64(cfg.AckEvery),
		Now:        e.now,
		Logger:     log,
		OnCommit:   onCommit,
		KeepPoints: cfg.Storage.KeepPoints,
		OnError:    status.fail,
	})
	if err != nil {
		return err
	}
	if err := rcv.RecoverAll(); err != nil {
		return fmt.Errorf("recover the replicas under %s: %w", cfg.Storage.Dir, err)
	}
	topts := cfg.transportOptions()
	// A restarted receiver resets its predecessor's connections at once,
	// so senders reconnect and resume without waiting out the idle timeout.
	topts.ResetKey = resetKey(id)
	topts.OnReject = func(remote net.Addr, err error) {
		log.Warn("refused a connection: certificate not trusted; pin its fingerprint in a [[sender]] entry if it is legitimate", "remote", remote, "err", err)
	}
	l, err := transport.Listen(cfg.Listen, tlsid.ServerTLS(id, trust), topts)
	if err != nil {
		return fmt.Errorf("listen on %s (key listen in %s): %w", cfg.Listen, cfg.file, err)
	}
	defer l.Close()
	log.Info("listening", "addr", l.Addr().String(), "storage", cfg.Storage.Dir, "fingerprint", id.Fingerprint, "senders", len(cfg.Senders))
	if e.listening != nil {
		e.listening(l.Addr())
	}

	var wg sync.WaitGroup
	var acceptErr error
	joiner := &stripe.Joiner{} // gathers the connections of striped streams
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
	cs := &connStream{Stream: s, conn: conn}
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
	var rw io.ReadWriteCloser = &peekedStream{Reader: io.MultiReader(bytes.NewReader(first), s), connStream: cs}
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
		s.SetReadDeadline(time.Now().Add(errorGrace))
		t := time.NewTimer(errorGrace)
		defer t.Stop()
		io.Copy(io.Discard, rw)
		select {
		case <-conn.Done():
		case <-t.C:
		case <-ctx.Done():
		}
	}
}

// peekedStream is a connection's stream whose first bytes were read to
// tell a striped stream from a plain one.
type peekedStream struct {
	io.Reader
	*connStream
}

func (p *peekedStream) Read(b []byte) (int, error) { return p.Reader.Read(b) }

// lockStorage takes an exclusive lock on the storage directory, so that two
// receivers never apply epochs to the same replicas. The lock is released
// when the returned function is called or the process ends.
func lockStorage(dir string) (func(), error) {
	if err := vfs.Default.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create storage directory: %w", err)
	}
	name := filepath.Join(dir, receiverLockFile)
	// The note, our pid, is only a hint for the message below.
	l, err := vfs.Default.Lock(name, strconv.Itoa(os.Getpid()))
	if err != nil {
		var le *vfs.LockedError
		if errors.As(err, &le) {
			who := "another drsync receive"
			if le.Note != "" {
				who += " (pid " + le.Note + ")"
			}
			return nil, fmt.Errorf("%w: %s holds %s; stop it, or give this receiver its own storage.dir", errLockBusy, who, name)
		}
		return nil, err
	}
	return func() { l.Unlock() }, nil
}

// receiverStatusWriter maintains <storage dir>/<vm>/STATUS.json.
type receiverStatusWriter struct {
	cfg  *ReceiverConfig
	log  *slog.Logger
	now  func() time.Time
	mu   sync.Mutex
	byVM map[string]*receiverStatus
}

// commit implements receiver.Options.OnCommit. A status that cannot be
// written is logged, never fatal: the replica itself is already committed.
// load returns the in-memory status of vm, read from its file the first
// time so totals carry on from the previous run.
func (w *receiverStatusWriter) load(vm string) (*receiverStatus, string) {
	path := filepath.Join(w.cfg.replicaDir(vm), receiverStatusFile)
	st := w.byVM[vm]
	if st == nil {
		st = &receiverStatus{}
		if err := readJSON(path, st); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				w.log.Warn("previous status unreadable; totals restart from zero", "vm", vm, "err", err)
			}
			st = &receiverStatus{}
		}
		w.byVM[vm] = st
	}
	return st, path
}

func (w *receiverStatusWriter) commit(s receiver.EpochStats) {
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
	st.LastPeer = &peerInfo{Fingerprint: s.Peer.Fingerprint, Name: s.Peer.Name}
	st.LastError, st.LastErrorAt = "", time.Time{}
	st.Updated = now
	if err := writeJSONAtomic(path, st); err != nil {
		w.log.Warn("cannot write receiver status", "vm", s.VM, "err", err)
	}
}

// hot records the size of vm's hot set.
func (w *receiverStatusWriter) hot(vm string, bytes int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, path := w.load(vm)
	st.HotSetBytes = bytes
	if err := writeJSONAtomic(path, st); err != nil {
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
func (w *receiverStatusWriter) fail(vm string, peer receiver.Peer, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, path := w.load(vm)
	now := w.now().UTC()
	st.VM = vm
	st.LastPeer = &peerInfo{Fingerprint: peer.Fingerprint, Name: peer.Name}
	st.LastError, st.LastErrorAt = err.Error(), now
	st.Updated = now
	if werr := writeJSONAtomic(path, st); werr != nil {
		w.log.Warn("cannot write receiver status", "vm", vm, "err", werr)
	}
}

// resetKey derives the QUIC stateless-reset secret from the receiver's
// private key: stable across restarts, unknown to anyone without the key.
func resetKey(id tlsid.Identity) *[32]byte {
	der, err := x509.MarshalPKCS8PrivateKey(id.Cert.PrivateKey)
	if err != nil {
		return nil
	}
	k := sha256.Sum256(append([]byte("drsync stateless reset v1\x00"), der...))
	return &k
}
