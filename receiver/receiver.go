package receiver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/drsync/drsync/receiver/protocol"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// ErrUnauthorized is what an Authorize function returns (wrapped) to refuse
// a peer.
var ErrUnauthorized = errors.New("not authorized")

// Peer is the verified identity of a connected sender.
type Peer struct {
	Fingerprint string
	Name        string // certificate common name, informational
}

// Options configure a Receiver.
type Options struct {
	Root string // directory holding one replica directory per VM
	FS   vfs.FS
	// Authorize decides whether peer may write the replica of vm.
	Authorize func(peer Peer, vm string) error
	// AckBytes is how much is staged between durable acknowledgements; it
	// bounds what a broken link makes the sender send again.
	AckBytes uint64
	Now      func() time.Time
	Logger   *slog.Logger
	// KeepPoints retains this many earlier epochs of each replica as
	// recovery points (replica.Options.KeepPoints).
	KeepPoints int
	// OnCommit, if set, is called after each committed epoch.
	OnCommit func(EpochStats)
	// OnError, if set, is called when a connection that was writing vm (the
	// peer was authorized for it) ends with an error: storage failures,
	// refused epochs, protocol violations. Refusals of unauthorized peers
	// are only logged, so they cannot make the receiver write anything.
	OnError func(vm string, peer Peer, err error)
	// ReleaseAfter is how long a connection staging an epoch waits for
	// its sender's next frame before it lets go of the replica (its staged
	// items durable), so that a failover can take a replica whose sender
	// died or went silent at once rather than after the connection's idle
	// timeout. The replica is taken back when the next frame arrives.
	// DefaultReleaseAfter if 0.
	ReleaseAfter time.Duration
	// Store keeps the replicas; if nil, a replica.FileStore on FS under
	// Root.
	Store replica.Store
}

// EpochStats describes one committed epoch as the receiver saw it.
type EpochStats struct {
	VM        string
	Peer      Peer
	Epoch     uint64
	Cut       time.Time
	WireBytes uint64 // received on this connection during the epoch
	RawBytes  uint64 // after decompression
	// RAM lists the replica's RAM blocks and the pages this connection
	// wrote in them during the epoch (items staged by an earlier
	// connection of a resumed epoch are not included).
	RAM []RAMWrites
}

// RAMWrites is one RAM block of a committed epoch.
type RAMWrites struct {
	Name    string
	File    string // the block's image, a path in the receiver's file system
	Size    int64
	Written []PageRange
}

// PageRange is count pages from page first.
type PageRange struct{ First, Count int64 }

// ramWrites collects the RAM pages an epoch's items write.
type ramWrites struct {
	kinds map[uint16]wire.Target
	pages map[uint16][]PageRange
}

func newRAMWrites(b *wire.EpochBegin) *ramWrites {
	w := &ramWrites{kinds: map[uint16]wire.Target{}, pages: map[uint16][]PageRange{}}
	for _, t := range b.Targets {
		if t.Kind == vmspec.KindRAM {
			w.kinds[t.ID] = t
		}
	}
	return w
}

func (w *ramWrites) add(it wire.Item) {
	if w == nil {
		return
	}
	var target uint16
	var pr PageRange
	switch it := it.(type) {
	case *wire.MemRun:
		target, pr = it.Target, PageRange{int64(it.Page), int64(len(it.Data) / vmspec.PageSize)}
	case *wire.PageRef:
		target, pr = it.Target, PageRange{int64(it.Page), int64(it.Count)}
	case *wire.ZeroRun:
		target, pr = it.Target, PageRange{int64(it.Offset / vmspec.PageSize), int64(it.Length / vmspec.PageSize)}
	default:
		return
	}
	if _, ok := w.kinds[target]; ok {
		w.pages[target] = append(w.pages[target], pr)
	}
}

// stats names the blocks by where the replica keeps them.
func (w *ramWrites) stats(rep replica.Handle) []RAMWrites {
	var out []RAMWrites
	if w == nil {
		return nil
	}
	m := rep.Manifest()
	img, err := rep.Export(m.Epoch, "", nil)
	if err != nil {
		return nil
	}
	for id, t := range w.kinds {
		e := m.RAM(t.Name)
		if e == nil {
			continue
		}
		out = append(out, RAMWrites{Name: t.Name, File: img.Location(e), Size: e.Size, Written: w.pages[id]})
	}
	return out
}

// DefaultAckBytes is AckBytes when left zero.
const DefaultAckBytes = 8 << 20

// Validate reports what is wrong with o.
func (o *Options) Validate() error {
	switch {
	case o.Store == nil && o.Root == "":
		return errors.New("receiver: no replica root directory")
	case o.Store == nil && o.FS == nil:
		return errors.New("receiver: no file system")
	case o.Authorize == nil:
		return errors.New("receiver: no authorization policy")
	case o.Now == nil:
		return errors.New("receiver: no clock")
	}
	return nil
}

// Receiver accepts epochs from senders into replicas under Root.
type Receiver struct {
	o    Options
	log  *slog.Logger
	mu   sync.Mutex
	busy map[string]*holder
}

// holder is the connection currently writing a VM's replica.
type holder struct {
	fingerprint string
	stop        func()        // closes its connection
	done        chan struct{} // closed once it let go of the VM
}

// New returns a Receiver.
func New(o Options) (*Receiver, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.AckBytes == 0 {
		o.AckBytes = DefaultAckBytes
	}
	if o.ReleaseAfter == 0 {
		o.ReleaseAfter = DefaultReleaseAfter
	}
	l := o.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	if o.Store == nil {
		o.Store = replica.FileStore{FS: o.FS, Root: o.Root, Now: o.Now, Logger: l, KeepPoints: o.KeepPoints}
	}
	return &Receiver{o: o, log: l, busy: map[string]*holder{}}, nil
}

// open opens vm's replica for writing.
func (r *Receiver) open(ctx context.Context, vm string) (replica.Handle, error) {
	return r.o.Store.Open(ctx, vm, replica.OpenOptions{Holder: "the receiver"})
}

// RecoverAll opens every replica under Root once, so that whatever a crash
// left (a committed epoch not yet applied) is applied before anything else
// looks at the replicas. A replica that is locked (a verify is reading it)
// or damaged does not stop the others: it is logged, and recovered (or
// refused, with the reason) when its sender connects. Only a root that
// cannot be listed is an error.
func (r *Receiver) RecoverAll() error {
	names, err := r.o.Store.VMs()
	if err != nil {
		return fmt.Errorf("list replicas: %w", err)
	}
	for _, vm := range names {
		rep, err := r.open(context.Background(), vm)
		switch {
		case errors.Is(err, replica.ErrLocked):
			r.log.Warn("replica in use by another process; it is recovered when its sender next connects", "vm", vm, "err", err)
			continue
		case errors.Is(err, replica.ErrTakenOver):
			r.log.Warn("replica taken over at this site; its sender will be refused until failback", "vm", vm, "err", err)
			continue
		case err != nil:
			r.log.Error("replica cannot be opened; its sender will be refused until an operator repairs it (drsync verify)", "vm", vm, "err", err)
			continue
		}
		r.log.Info("replica ready", "vm", vm, "epoch", rep.Manifest().Epoch, "staged", rep.Position().StagedEpoch, "durable", rep.Position().StagedDurable)
		rep.Close()
	}
	return nil
}

// takeoverWait bounds how long a reconnecting sender waits for its previous
// connection to let go of the VM.
const takeoverWait = 10 * time.Second

// acquire makes h the writer of vm. A sender that reconnects (it restarted,
// or its link broke before the receiver noticed) takes over from its own
// previous connection at once, rather than being refused until that
// connection times out; another identity is refused.
func (r *Receiver) acquire(vm string, h *holder) bool {
	r.mu.Lock()
	old := r.busy[vm]
	if old == nil {
		r.busy[vm] = h
		r.mu.Unlock()
		return true
	}
	r.mu.Unlock()
	if old.fingerprint != h.fingerprint {
		return false
	}
	r.log.Info("sender reconnected; ending its previous connection", "vm", vm, "peer", h.fingerprint)
	old.stop()
	select {
	case <-old.done:
	case <-time.After(takeoverWait):
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.busy[vm] != nil {
		return false
	}
	r.busy[vm] = h
	return true
}

func (r *Receiver) release(vm string, h *holder) {
	r.mu.Lock()
	if r.busy[vm] == h {
		delete(r.busy, vm)
	}
	r.mu.Unlock()
	close(h.done)
}

// toWire turns an error into the Error frame the sender is told.
func toWire(err error) *wire.Error {
	var we *wire.Error
	switch {
	case errors.As(err, &we):
		return we
	case errors.Is(err, replica.ErrProtocol):
		return &wire.Error{Code: wire.ErrProtocol, Message: err.Error()}
	case errors.Is(err, replica.ErrDigest):
		return &wire.Error{Code: wire.ErrDigest, Message: err.Error()}
	case errors.Is(err, replica.ErrStorage), errors.Is(err, replica.ErrBroken):
		return &wire.Error{Code: wire.ErrStorage, Message: err.Error()}
	case errors.Is(err, replica.ErrLocked):
		return &wire.Error{Code: wire.ErrBusy, Message: err.Error()}
	case errors.Is(err, replica.ErrTakenOver):
		return &wire.Error{Code: wire.ErrTakenOver, Message: err.Error()}
	case errors.Is(err, wire.ErrMalformed):
		return &wire.Error{Code: wire.ErrProtocol, Message: err.Error()}
	case errors.Is(err, replica.ErrCorrupt):
		return &wire.Error{Code: wire.ErrInternal, Message: "replica needs operator attention: " + err.Error()}
	}
	return &wire.Error{Code: wire.ErrInternal, Message: err.Error()}
}

// Handle serves one connection from peer until the sender closes it or an
// error ends it. Nothing a sender sends can leave the replica anywhere but
// at a committed epoch, with a staged epoch at most.
func (r *Receiver) Handle(ctx context.Context, peer Peer, rw io.ReadWriteCloser) (err error) {
	defer rw.Close()
	stop := context.AfterFunc(ctx, func() { rw.Close() })
	defer stop()
	log := r.log.With("peer", peer.Fingerprint)
	bw := bufio.NewWriterSize(rw, 64<<10)
	enc := wire.NewEncoder(bw, wire.EncoderOptions{})
	var rep replica.Handle
	var vm string
	// While the sender is silent mid-epoch the replica is let go (see
	// idleReader); rep is only touched there while this goroutine waits
	// in Read.
	idle := newIdleReader(rw, r.o.ReleaseAfter, func() {
		if err := rep.Release(); err != nil {
			log.Warn("could not let go of the replica while waiting for the sender", "vm", vm, "err", err)
			return
		}
		log.Debug("sender silent; replica let go until its next frame", "vm", vm, "staged", rep.Position().StagedDurable)
	})
	defer idle.stop()
	// Each frame is done with before the next is read (an item is in the
	// journal once Append returns), so items borrow the decoder's buffer.
	dec := wire.NewDecoder(bufio.NewReaderSize(idle, 1<<20), wire.DecoderOptions{Borrow: true})
	send := func(f wire.Frame) error {
		if err := enc.Encode(f); err != nil {
			return err
		}
		return bw.Flush()
	}
	sess := protocol.New(r.o.AckBytes)
	me := &holder{fingerprint: peer.Fingerprint, stop: func() { rw.Close() }, done: make(chan struct{})}
	owned := false // this connection holds vm
	var epochWire0, epochRaw0 uint64
	var writes *ramWrites
	defer func() {
		idle.hold(false)
		if rep != nil {
			// Whatever was staged becomes durable, so a reconnecting sender
			// resumes after it.
			if _, serr := rep.Sync(); serr != nil {
				log.Warn("sync staged epoch", "vm", vm, "err", serr)
			}
			rep.Close()
		}
		if owned {
			r.release(vm, me)
		}
		if err != nil {
			log.Warn("connection ended", "vm", vm, "err", err)
			if owned && r.o.OnError != nil {
				r.o.OnError(vm, peer, err)
			}
			send(toWire(err))
		}
	}()
	for {
		idle.hold(rep != nil && !rep.Released())
		f, derr := dec.Decode()
		idle.hold(false)
		if derr != nil {
			if errors.Is(derr, io.EOF) && !errors.Is(derr, io.ErrUnexpectedEOF) {
				return nil
			}
			if errors.Is(derr, wire.ErrMalformed) {
				return fmt.Errorf("from %s: %w", peer.Fingerprint, derr)
			}
			log.Info("connection lost", "vm", vm, "err", derr)
			return nil
		}
		if pe, ok := f.(*wire.Error); ok {
			log.Warn("sender reported an error", "vm", vm, "code", pe.Code.String(), "message", pe.Message)
			return nil
		}
		st, wantSync, err := sess.Next(f)
		if err != nil {
			return err
		}
		if rep != nil && rep.Released() {
			switch st {
			case protocol.StepItem, protocol.StepCommit:
				if err := rep.Reacquire(ctx, reacquireWait); err != nil {
					return fmt.Errorf("take back the replica of %s after its sender was silent: %w", vm, err)
				}
				log.Debug("sender back; replica taken back", "vm", vm)
			case protocol.StepBegin:
				// Released since the last commit: taken back as an open
				// would take it (no wait), or opened again if someone
				// wrote it.
				if err := rep.Reacquire(ctx, 0); errors.Is(err, replica.ErrBroken) {
					log.Info("replica changed since the last epoch; opening it again", "vm", vm, "err", err)
					rep.Close()
					rep = nil
				} else if err != nil {
					return err
				}
			}
		}
		switch st {
		case protocol.StepHello:
			vm = f.(*wire.Hello).VM
			if err := r.o.Authorize(peer, vm); err != nil {
				log.Warn("refused", "vm", vm, "err", err)
				vm = ""
				return &wire.Error{Code: wire.ErrUnauthorized, Message: fmt.Sprintf("certificate %s is not authorized for VM %q", peer.Fingerprint, f.(*wire.Hello).VM)}
			}
			if !r.acquire(vm, me) {
				name := vm
				vm = ""
				return &wire.Error{Code: wire.ErrBusy, Message: fmt.Sprintf("another sender is replicating VM %q", name)}
			}
			owned = true
			// The replica is locked only while an epoch is in flight, so
			// verify and failover drills can read it between epochs; it
			// stays open, released, so that each epoch does not read every
			// block table again.
			rep, err = r.open(ctx, vm)
			if err != nil {
				return err
			}
			pos := rep.Position()
			r.letGo(&rep, vm, log)
			log.Info("sender connected", "vm", vm, "committed", pos.Committed)
			if err := send(&wire.Welcome{Version: sess.Version(), Position: pos}); err != nil {
				return nil
			}
		case protocol.StepTables:
			if err := r.sendTables(ctx, vm, send); err != nil {
				return err
			}
		case protocol.StepBegin:
			if rep == nil {
				if rep, err = r.open(ctx, vm); err != nil {
					return err
				}
			}
			if err := rep.Begin(f.(*wire.EpochBegin)); err != nil {
				return err
			}
			writes = newRAMWrites(f.(*wire.EpochBegin))
			epochWire0, epochRaw0 = dec.Stats().WireBytes, dec.Stats().RawBytes
		case protocol.StepItem:
			it := f.(wire.Item)
			if err := rep.Append(it); err != nil {
				return err
			}
			writes.add(it)
			if wantSync {
				n, err := rep.Sync()
				if err != nil {
					return err
				}
				if err := send(&wire.Ack{Epoch: sess.Epoch(), Durable: n}); err != nil {
					return nil
				}
			}
		case protocol.StepCommit:
			c := f.(*wire.EpochCommit)
			if err := rep.Commit(c); err != nil {
				return err
			}
			m := rep.Manifest()
			log.Info("epoch committed", "vm", vm, "epoch", c.Epoch, "items", c.Items)
			if r.o.OnCommit != nil {
				st := dec.Stats()
				r.o.OnCommit(EpochStats{VM: vm, Peer: peer, Epoch: c.Epoch, Cut: m.Cut, WireBytes: st.WireBytes - epochWire0, RawBytes: st.RawBytes - epochRaw0,
					RAM: writes.stats(rep)})
			}
			r.letGo(&rep, vm, log)
			if err := send(&wire.Ack{Epoch: c.Epoch, Durable: c.Items, Committed: true}); err != nil {
				return nil
			}
		}
	}
}

// letGo releases *rep between epochs, or closes it (and sets it nil) if
// it cannot be released.
func (r *Receiver) letGo(rep *replica.Handle, vm string, log *slog.Logger) {
	if err := (*rep).Release(); err != nil {
		log.Warn("could not let go of the replica between epochs; closing it", "vm", vm, "err", err)
		(*rep).Close()
		*rep = nil
	}
}

// sendTables streams the block tables of vm's committed epoch, for a sender
// that lost its own record of them, then TableEnd with the state they
// describe.
func (r *Receiver) sendTables(ctx context.Context, vm string, send func(wire.Frame) error) error {
	rep, err := r.open(ctx, vm)
	if err != nil {
		return err
	}
	defer rep.Close()
	m := rep.Manifest()
	for _, t := range m.Targets {
		kind := t.TargetKind()
		tab := rep.Table(kind, t.Name)
		for first := 0; first < len(tab.Hashes); first += wire.MaxTableHashes {
			hs := tab.Hashes[first:min(first+wire.MaxTableHashes, len(tab.Hashes))]
			if err := send(&wire.Table{Kind: kind, Name: t.Name, Size: uint64(t.Size), BlockSize: uint32(t.BlockSize), First: uint64(first), Hashes: hs}); err != nil {
				return nil
			}
		}
	}
	r.log.Info("sent block tables to a sender without a record of the replica", "vm", vm, "epoch", m.Epoch)
	return send(&wire.TableEnd{Epoch: m.Epoch, StateID: m.StateID})
}
