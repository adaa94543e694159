package sender

import (
	"github.com/drsync/drsync/sender/protocol"
	"github.com/drsync/drsync/wire"
)

// baseChoice is how the sender relates its index to the replica's position.
type baseChoice int

const (
	baseFresh     baseChoice = iota // replica is empty: it reads zeros everywhere
	baseCommitted                   // committed index matches the replica
	basePending                     // pending index matches: the last commit landed, promote it
	baseUnknown                     // nothing matches: compare everything (full pass)
	baseFetched                     // nothing matched, the replica's own tables were fetched and check out
)

func (b baseChoice) String() string {
	return [...]string{"fresh", "committed", "pending", "unknown", "replica-tables"}[b]
}

// chooseBase decides what the replica holds, from the receiver's durable
// position and the sender's own committed and pending indexes. It never
// guesses: when neither index matches the replica's state identity, the
// sender does a full pass rather than risk a silent gap.
func chooseBase(pos wire.Position, committed, pending *Index) baseChoice {
	switch {
	case pending != nil && pending.Epoch == pos.Committed && pending.StateID == pos.StateID:
		return basePending
	case committed != nil && committed.Epoch == pos.Committed && committed.StateID == pos.StateID:
		return baseCommitted
	case pos.Committed == 0:
		return baseFresh
	default:
		return baseUnknown
	}
}

// resumeFrom is the first item to send of plan p given the receiver's
// durable position (protocol.ResumeFrom).
func resumeFrom(p *Plan, pos wire.Position) uint64 { return protocol.ResumeFrom(p.ref(), pos) }

// ref is what the protocol session knows of p: while p is being planned,
// its items so far, and no state identity yet.
func (p *Plan) ref() protocol.Plan {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := protocol.Plan{Epoch: p.Epoch, ID: p.ID, Items: uint64(len(p.Items)), Cut: p.Cut, Open: p.open}
	if p.complete && p.Next != nil {
		r.StateID = p.Next.StateID
	}
	return r
}
