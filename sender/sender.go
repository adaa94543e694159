package sender

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/sender/protocol"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Dialer opens a connection to the receiver: one authenticated, ordered,
// reliable byte stream (a QUIC stream in production, a pipe in tests).
type Dialer interface {
	Dial(ctx context.Context) (io.ReadWriteCloser, error)
}

// DialFunc adapts a function to Dialer.
type DialFunc func(ctx context.Context) (io.ReadWriteCloser, error)

// Dial calls f.
func (f DialFunc) Dial(ctx context.Context) (io.ReadWriteCloser, error) { return f(ctx) }

// Options configure a Sender.
type Options struct {
	VM          string
	Source      Source
	Dialer      Dialer
	Store       Store
	Compression wire.Compression
	Now         func() time.Time
	Logger      *slog.Logger
	// Progress, if set, is called as items are sent.
	Progress func(Progress)
	// Dedup sends memory pages that equal a disk page of the same cut as
	// references to it (see Dedup); DedupEntries bounds its index.
	Dedup        bool
	DedupEntries int
}

// Progress reports an epoch in flight.
type Progress struct {
	Epoch uint64
	Cut   time.Time
	// Of the epoch's AllBytes changed bytes (data: zero runs and
	// references carry none), SentBytes went in this attempt and
	// LeftBytes are still to go.
	SentBytes, AllBytes, LeftBytes uint64
	Durable, Items                 uint64
	// Planning says the epoch is still being planned: AllBytes, LeftBytes
	// and Items count what is planned so far.
	Planning bool
	// WireBytes went on the wire in this attempt, in SendTime since its
	// first frame (less the time spent waiting for the planner), at level
	// Compression.
	WireBytes   uint64
	SendTime    time.Duration
	Compression wire.Compression
}

// Validate reports what is wrong with o.
func (o *Options) Validate() error {
	switch {
	case vmspec.ValidVMName(o.VM) != nil:
		return fmt.Errorf("sender: %w", vmspec.ValidVMName(o.VM))
	case o.Source == nil:
		return errors.New("sender: no source")
	case o.Dialer == nil:
		return errors.New("sender: no dialer")
	case o.Store.FS == nil || o.Store.Dir == "":
		return errors.New("sender: no state directory")
	case o.Now == nil:
		return errors.New("sender: no clock")
	}
	return o.Compression.Validate()
}

// Result describes one committed epoch.
type Result struct {
	Epoch     uint64
	Cut       time.Time
	Base      string // how the replica's content was known: fresh, committed, pending, unknown
	Items     int
	StartSeq  uint64 // > 0 when the epoch resumed a staged transfer
	DataBytes uint64 // changed bytes in the epoch
	Scanned   int64  // bytes of source compared
	WireBytes uint64 // bytes written to the connection for this epoch, all attempts
	// ResentBytes counts data bytes sent again because an earlier attempt
	// broke after sending them but before the receiver made them durable.
	ResentBytes uint64
	Attempts    int
	Duration    time.Duration
	// Pause is how long the guest was stopped for the cut, and
	// HypervisorDowntime the part QEMU itself reports (live sources only).
	Pause, HypervisorDowntime time.Duration
	// RAM pages changed in the epoch, by how they travelled: as data, as
	// references to disk pages the replica holds, as zero runs.
	RAMDataPages, RAMRefPages, RAMZeroPages int64
	// RAMDupPages are the references (among RAMRefPages) to other pages of
	// memory rather than to disks.
	RAMDupPages int64
	// RefBytes are the changed bytes that travelled as references (the
	// pages of RAMRefPages).
	RefBytes uint64
	// SendTime is the time from the epoch's first frame to its commit
	// acknowledgement in the last attempt, less the time it waited for
	// the planner: the part the link paces.
	// CompressTime is the time spent compressing in it, and Compression
	// the level it used.
	SendTime, CompressTime time.Duration
	Compression            wire.Compression
}

// Sender replicates one VM: each RunEpoch cuts a snapshot, works out what
// changed against what the replica holds, and streams it.
type Sender struct {
	o         Options
	log       *slog.Logger
	committed *Index
	pending   *Index
	loaded    bool
	sess      *session
	// The epoch in flight survives a broken connection, so the next attempt
	// resumes it instead of cutting a new one.
	inflight *attempt
	dedup    *Dedup
}

type attempt struct {
	plan    *Plan
	snap    *Snapshot
	baseID  uint64 // replica state the plan was made against
	maxSent int    // highest item index sent + 1, across attempts
	res     Result
	started time.Time
	// The planner runs beside the first attempt's sending (Plan.fill);
	// planDone is closed when it returns. An attempt never ends with it
	// running: RunEpoch waits for it.
	planDone chan struct{}
	planned  bool // the complete plan's figures are in res, and the source told
}

// planComplete records what a complete plan says: its figures, and, for
// a source that tracks changes between cuts, the snapshot's tables.
func (a *attempt) planComplete() {
	if a.planned {
		return
	}
	a.planned = true
	p := a.plan
	if a.snap.Planned != nil {
		a.snap.Planned(p.Next.Tables)
	}
	a.res.Items, a.res.DataBytes, a.res.Scanned = len(p.Items), p.Bytes, p.Scanned
	a.res.RAMDataPages, a.res.RAMRefPages, a.res.RAMZeroPages = p.RAMDataPages, p.RAMRefPages, p.RAMZeroPages
	a.res.RAMDupPages, a.res.RefBytes = p.RAMDupPages, uint64(p.RAMRefPages)*vmspec.PageSize
}

// session is a connection and its protocol state.
type session struct {
	rw    io.ReadWriteCloser
	bw    *bufio.Writer
	enc   *wire.Encoder
	dec   *wire.Decoder
	proto *protocol.Session
}

// sessionBuffer is the size of a connection's write buffer.
const sessionBuffer = 256 << 10

// New returns a Sender.
func New(o Options) (*Sender, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	l := o.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	s := &Sender{o: o, log: l.With("vm", o.VM)}
	if o.Dedup {
		d, err := NewDedup(o.DedupEntries)
		if err != nil {
			return nil, fmt.Errorf("sender: %w", err)
		}
		s.dedup = d
	}
	return s, nil
}

// Close drops the connection and any epoch in flight.
func (s *Sender) Close() error {
	s.dropSession()
	if s.inflight != nil {
		s.inflight.snap.Close()
		s.inflight = nil
	}
	return nil
}

// SetCompression changes the compression of the epochs sent from now on
// (an epoch being sent keeps its level until its next attempt).
func (s *Sender) SetCompression(c wire.Compression) error {
	if err := c.Validate(); err != nil {
		return err
	}
	s.o.Compression = c
	return nil
}

// Disconnect drops the connection; the next RunEpoch dials again. An epoch
// in flight is kept and resumed.
func (s *Sender) Disconnect() { s.dropSession() }

func (s *Sender) dropSession() {
	if s.sess != nil {
		s.sess.rw.Close()
		s.sess = nil
	}
}

func (s *Sender) connect(ctx context.Context) error {
	if s.sess != nil {
		return nil
	}
	rw, err := s.o.Dialer.Dial(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	// The buffer gathers small frames (references, zero runs) into large
	// writes; a frame larger than it goes to the stream without a copy.
	// It lives as long as the connection, idle between epochs, so it is
	// a quarter of the largest frame rather than all of it.
	bw := bufio.NewWriterSize(rw, sessionBuffer)
	ss := &session{rw: rw, bw: bw, enc: wire.NewEncoder(bw, wire.EncoderOptions{Compression: s.o.Compression, Clock: s.o.Now}), dec: wire.NewDecoder(bufio.NewReaderSize(rw, 64<<10), wire.DecoderOptions{}),
		proto: protocol.New(s.o.VM)}
	// A peer that never answers must not hang the sender.
	stop := context.AfterFunc(ctx, func() { rw.Close() })
	defer stop()
	if err := ss.enc.Encode(ss.proto.Hello()); err == nil {
		err = bw.Flush()
	}
	f, err := ss.dec.Decode()
	if err != nil {
		rw.Close()
		return fmt.Errorf("handshake: %w", err)
	}
	if err := ss.proto.Handshake(f); err != nil {
		rw.Close()
		return err
	}
	s.sess = ss
	pos := ss.proto.Position()
	s.log.Debug("connected", "committed", pos.Committed, "staged", pos.StagedEpoch, "durable", pos.StagedDurable)
	return nil
}

// RunEpoch replicates one epoch: it connects if needed, resumes the epoch in
// flight or cuts a new one, and returns once the receiver has committed it.
// On error the epoch in flight is kept, so calling RunEpoch again resumes it.
func (s *Sender) RunEpoch(ctx context.Context) (*Result, error) {
	if !s.loaded {
		c, p, err := s.o.Store.Load()
		if err != nil {
			s.log.Warn("sender state unreadable; the next epoch compares everything", "err", err)
		}
		s.committed, s.pending, s.loaded = c, p, true
	}
	if err := s.connect(ctx); err != nil {
		return nil, err
	}
	res, err := s.runEpoch(ctx)
	if err != nil {
		s.dropSession()
		if a := s.inflight; a != nil {
			// The planner ends by itself (it stops when ctx does), and a
			// plan it could not finish is no plan to resume.
			<-a.planDone
			_, _, _, perr := a.plan.progress()
			if perr == nil {
				// The source learns the cut's tables as it would have
				// had planning not overlapped the failed sending.
				a.planComplete()
			}
			if perr != nil || protocol.AfterFailure(err) == protocol.Recut {
				// The epoch cannot be finished as planned; cut a fresh one next time.
				a.snap.Close()
				s.inflight = nil
			}
		}
	}
	return res, err
}

func (s *Sender) runEpoch(ctx context.Context) (*Result, error) {
	ss := s.sess
	pos := ss.proto.Position()
	choice := chooseBase(pos, s.committed, s.pending)
	switch choice {
	case basePending:
		if err := s.o.Store.PromotePending(s.pending); err != nil {
			return nil, err
		}
		s.committed, s.pending = s.pending, nil
	case baseUnknown:
		s.log.Warn("the replica's content is not what this sender last recorded; fetching its block tables", "replica_epoch", pos.Committed)
		idx, err := s.fetchTables(ctx, ss)
		if err != nil {
			return nil, fmt.Errorf("fetch the replica's block tables: %w", err)
		}
		if idx == nil {
			s.log.Warn("the replica's tables do not match its state; comparing every block (full pass)", "replica_epoch", pos.Committed)
			break
		}
		if err := s.o.Store.Promote(idx); err != nil {
			return nil, err
		}
		s.committed, s.pending, choice = idx, nil, baseFetched
	}
	epoch := pos.Committed + 1
	a := s.inflight
	if a != nil && !protocol.Fits(a.plan.ref(), a.baseID, pos) {
		a.snap.Close()
		a, s.inflight = nil, nil
	}
	if a == nil {
		snap, err := s.o.Source.Snapshot(ctx)
		if err != nil {
			return nil, fmt.Errorf("epoch %d: snapshot: %w", epoch, err)
		}
		plan, olds, err := newPlan(epoch, snap, choice, s.committed, s.dedup)
		if err != nil {
			snap.Close()
			return nil, err
		}
		a = &attempt{plan: plan, snap: snap, baseID: pos.StateID, started: s.o.Now(), planDone: make(chan struct{})}
		a.res = Result{Epoch: epoch, Cut: plan.Cut, Base: choice.String(), Pause: snap.Pause, HypervisorDowntime: snap.HypervisorDowntime}
		s.inflight = a
		// The epoch's first items go on the wire while the rest are read
		// and hashed (on a connection that allows open epochs).
		go func(committed *Index) {
			defer close(a.planDone)
			plan.fill(ctx, snap, choice, committed, olds)
		}(s.committed)
	}
	p := a.plan
	if ss.proto.Version() < wire.VersionOpen {
		// An older receiver needs the item count at EpochBegin.
		select {
		case <-a.planDone:
		case <-ctx.Done():
			return nil, fmt.Errorf("epoch %d: plan: %w", epoch, ctx.Err())
		}
	}
	p.beginOpen(ss.proto.Version() >= wire.VersionOpen)
	var prefix uint64
	if p.ref().Open && pos.StagedEpoch == epoch && pos.StagedDurable > 0 {
		// The receiver stages part of this epoch (this process's, or a
		// killed predecessor's): resumable if those are this plan's first
		// items, so wait until that many are planned.
		prefix, _ = p.waitPrefix(pos.StagedDurable)
	}
	ref := p.ref() // after the wait: the items planned by then
	ref.Prefix = prefix
	if _, _, complete, perr := p.progress(); perr != nil {
		return nil, perr
	} else if complete {
		a.planComplete()
	}
	start, err := ss.proto.Begin(ref)
	if err != nil {
		return nil, err
	}
	a.res.Attempts++
	if start > 0 {
		a.res.StartSeq = start
	}
	for i := int(start); i < a.maxSent; i++ {
		if it := p.item(i); it.Type != wire.TypeZeroRun {
			a.res.ResentBytes += uint64(it.Len)
		}
	}
	_, planBytes, _, _ := p.progress()
	s.log.Info("epoch", "epoch", epoch, "base", choice.String(), "items", ref.Items, "bytes", planBytes, "open", ref.Open, "resume_at", start)

	stop := context.AfterFunc(ctx, func() { ss.rw.Close() })
	defer stop()
	if err := ss.enc.SetCompression(s.o.Compression); err != nil {
		return nil, err
	}
	wire0 := ss.enc.Stats().WireBytes
	comp0 := ss.enc.Stats().CompressTime
	sendStart := s.o.Now()
	var planWait time.Duration // of the time since sendStart, waiting for the planner
	// The session is shared with the acknowledgement reader.
	var mu sync.Mutex
	locked := func(f func()) { mu.Lock(); defer mu.Unlock(); f() }
	done := make(chan struct{}) // closed when the session says the attempt is over
	go func() {
		defer close(done)
		// A sender waiting for the planner learns of the end too.
		defer p.poke()
		for {
			f, err := ss.dec.Decode()
			over := true
			locked(func() {
				if err != nil {
					ss.proto.ReadFailed(err)
					return
				}
				over = ss.proto.Receive(f)
			})
			if over {
				return
			}
		}
	}()
	fail := func(err error) (*Result, error) {
		ss.rw.Close()
		// Prefer the receiver's reason over the write error it caused.
		select {
		case <-done:
			var aerr error
			locked(func() { aerr = ss.proto.Err() })
			var remote *wire.Error
			if errors.As(aerr, &remote) {
				return nil, aerr
			}
		case <-time.After(100 * time.Millisecond):
		}
		a.res.WireBytes += ss.enc.Stats().WireBytes - wire0
		return nil, err
	}
	if p.Group != nil && ss.proto.Version() < wire.VersionGroups {
		return fail(fmt.Errorf("epoch %d: group %s: receiver speaks protocol %d, group tags need %d: upgrade the receiver", epoch, p.Group.Group, ss.proto.Version(), wire.VersionGroups))
	}
	if ss.proto.Version() < wire.VersionBlobs && slices.ContainsFunc(p.Targets, func(t wire.Target) bool { return t.Kind == vmspec.KindBlob }) {
		return fail(fmt.Errorf("epoch %d: receiver speaks protocol %d, blob targets (a libvirt domain's definition) need %d: upgrade the receiver", epoch, ss.proto.Version(), wire.VersionBlobs))
	}
	planID := ref.ID
	if ref.Open {
		// An open epoch names the items before StartSeq, to be resumed.
		planID, _ = p.prefix(start)
	}
	err = ss.enc.Encode(&wire.EpochBegin{Epoch: epoch, Cut: p.Cut, Plan: planID, Items: ref.Items, Bytes: planBytes, StartSeq: start, Targets: p.Targets, Group: p.Group, Open: ref.Open})
	if err != nil {
		return fail(fmt.Errorf("epoch %d: send: %w", epoch, err))
	}
	// data counts the items' bytes as the plan's Bytes does (no zero runs,
	// no references), so that the bytes left are Bytes less data; data0 is
	// what an earlier connection already sent.
	var data0 uint64
	for i := range int(start) {
		data0 += p.item(i).payloadBytes()
	}
	data := data0
	for {
		n, _, complete, perr := p.progress()
		if perr != nil {
			return fail(perr)
		}
		var stateID uint64
		if complete {
			a.planComplete()
			stateID = p.Next.StateID
		}
		var act protocol.Action
		var sent uint64
		locked(func() {
			ss.proto.Planned(uint64(n), complete, stateID)
			if act = ss.proto.Next(); act.Kind == protocol.SendItem {
				ss.proto.Sending(act.Item)
			}
			sent = ss.proto.Sent()
		})
		if act.Kind == protocol.SendCommit && !complete {
			// Begun closed before its plan was complete: a defect here.
			return fail(fmt.Errorf("epoch %d: commit due with the plan incomplete (%d items so far): %w", epoch, n, wire.ErrMalformed))
		}
		if act.Kind == protocol.SendCommit {
			break
		}
		if act.Kind == protocol.AwaitPlan {
			// What is sent so far goes out (and gets acknowledged) while
			// the planner reads on.
			if err := ss.bw.Flush(); err != nil {
				return fail(fmt.Errorf("epoch %d: send: %w", epoch, err))
			}
			w0 := s.o.Now()
			p.waitItems(int(sent))
			planWait += s.o.Now().Sub(w0)
			continue
		}
		if act.Kind != protocol.SendItem {
			// The receiver refused the epoch (or broke the protocol): stop sending.
			ss.rw.Close()
			a.res.WireBytes += ss.enc.Stats().WireBytes - wire0
			return nil, stopErr(epoch, act)
		}
		i := int(act.Item)
		f, err := p.Frame(a.snap, i)
		if err != nil {
			return fail(fmt.Errorf("epoch %d: %w", epoch, err))
		}
		err = ss.enc.Encode(f)
		recycle(f) // written, or never to be
		if err != nil {
			return fail(fmt.Errorf("epoch %d: send item %d: %w", epoch, i, err))
		}
		a.maxSent = max(a.maxSent, i+1)
		data += p.item(i).payloadBytes()
		if s.o.Progress != nil {
			var durable uint64
			locked(func() { durable = ss.proto.Durable() })
			// The planner went on while the item was written.
			n, planBytes, complete, _ := p.progress()
			s.o.Progress(Progress{Epoch: epoch, Cut: p.Cut, SentBytes: data - data0, AllBytes: planBytes, LeftBytes: planBytes - min(data, planBytes),
				Durable: durable, Items: uint64(n), Planning: !complete,
				WireBytes: ss.enc.Stats().WireBytes - wire0, SendTime: s.o.Now().Sub(sendStart) - planWait, Compression: s.o.Compression})
		}
	}
	// The replica's next content is recorded before the commit leaves, so a
	// sender that dies now still knows it, whichever way the commit goes.
	if err := s.o.Store.SavePending(p.Next, s.committed); err != nil {
		return fail(fmt.Errorf("epoch %d: %w", epoch, err))
	}
	s.pending = p.Next
	locked(ss.proto.Committing)
	if err := ss.enc.Encode(&wire.EpochCommit{Epoch: epoch, Items: uint64(len(p.Items)), Digest: p.Digest, States: p.States}); err != nil {
		return fail(fmt.Errorf("epoch %d: send commit: %w", epoch, err))
	}
	if err := ss.bw.Flush(); err != nil {
		return fail(fmt.Errorf("epoch %d: send: %w", epoch, err))
	}
	s.log.Debug("commit sent; waiting for the receiver to apply the epoch", "epoch", epoch)
	select {
	case <-done:
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	var act protocol.Action
	locked(func() { act = ss.proto.Next() })
	if act.Kind != protocol.Done {
		a.res.WireBytes += ss.enc.Stats().WireBytes - wire0
		return nil, stopErr(epoch, act)
	}
	a.res.WireBytes += ss.enc.Stats().WireBytes - wire0
	a.res.SendTime = s.o.Now().Sub(sendStart) - planWait
	a.res.CompressTime = ss.enc.Stats().CompressTime - comp0
	a.res.Compression = s.o.Compression
	if err := s.o.Store.PromotePending(p.Next); err != nil {
		return nil, fmt.Errorf("epoch %d committed, but: %w", epoch, err)
	}
	s.committed, s.pending = p.Next, nil
	a.snap.Close()
	s.inflight = nil
	a.res.Duration = s.o.Now().Sub(a.started)
	res := a.res
	return &res, nil
}

// fetchTables asks the receiver for the block tables of the replica's
// committed epoch. It returns nil (and no error) when they do not add up to
// the state identity the receiver announced: then nothing is trusted and
// the sender compares every block.
func (s *Sender) fetchTables(ctx context.Context, ss *session) (*Index, error) {
	stop := context.AfterFunc(ctx, func() { ss.rw.Close() })
	defer stop()
	if err := ss.enc.Encode(&wire.TableRequest{}); err != nil {
		return nil, err
	}
	if err := ss.bw.Flush(); err != nil {
		return nil, err
	}
	pos := ss.proto.Position()
	idx := &Index{Epoch: pos.Committed, Tables: map[string]*blockhash.Table{}}
	filled := map[string]int{}
	for {
		f, err := ss.dec.Decode()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *wire.Table:
			k := TableKey(f.Kind, f.Name)
			t := idx.Tables[k]
			if t == nil {
				if int64(f.Size) > 1<<50 || blockhash.Blocks(int64(f.Size), int(f.BlockSize)) > blockhash.MaxEntries {
					return nil, fmt.Errorf("table of %s: %d bytes at %d-byte blocks is too large: %w", k, f.Size, f.BlockSize, wire.ErrMalformed)
				}
				t = &blockhash.Table{BlockSize: int(f.BlockSize), Size: int64(f.Size), Hashes: make([]uint64, blockhash.Blocks(int64(f.Size), int(f.BlockSize)))}
				idx.Tables[k] = t
			}
			if t.BlockSize != int(f.BlockSize) || t.Size != int64(f.Size) {
				return nil, fmt.Errorf("table of %s changes shape: %w", k, wire.ErrMalformed)
			}
			copy(t.Hashes[f.First:], f.Hashes)
			filled[k] += len(f.Hashes)
		case *wire.TableEnd:
			for k, t := range idx.Tables {
				if filled[k] != len(t.Hashes) {
					return nil, nil
				}
			}
			idx.StateID = idx.ComputeStateID()
			if f.Epoch != pos.Committed || f.StateID != pos.StateID || idx.StateID != pos.StateID {
				return nil, nil
			}
			return idx, nil
		case *wire.Error:
			return nil, f
		default:
			return nil, fmt.Errorf("receiver sent %s while sending tables: %w", f.Type(), wire.ErrMalformed)
		}
	}
}

// stopErr is the error of an attempt the session stopped.
func stopErr(epoch uint64, act protocol.Action) error {
	if act.Err != nil {
		return act.Err
	}
	return fmt.Errorf("epoch %d: the session stopped with nothing to report (%d): %w", epoch, act.Kind, wire.ErrMalformed)
}
