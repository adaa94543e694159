// Package recovery is the replica's journal recovery rule, without IO: given
// the committed epoch and what a scan found in the journal, what opening
// the replica does with it (nothing, discard, resume, replay, or stop for
// an operator). The replica package scans and acts; the rule is here.
//
// It must not know files, frames or the journal's layout.
package recovery

// Action is what opening a replica does with the journal it finds.
type Action int

const (
	Nothing Action = iota // no journal
	Discard               // journal of an epoch already applied, or empty: delete it
	Resume                // staged epoch without commit: keep it, resume appending
	Replay                // committed epoch not (fully) applied: apply it again
	Corrupt               // journal that cannot follow the manifest: stop, operator needed
)

func (a Action) String() string {
	return [...]string{"nothing", "discard", "resume", "replay", "corrupt"}[a]
}

// JournalFacts is what recovery needs to know of a scanned journal.
type JournalFacts struct {
	Exists    bool
	HasBegin  bool
	Epoch     uint64 // of its EpochBegin
	HasCommit bool
}

// Decide is the journal recovery rule. The replica's images and
// tables are only written after a commit record is durable, and the manifest
// is replaced only after they are synced, so:
//   - a journal for an epoch the manifest already has was fully applied
//     before the crash hit its removal: discard it;
//   - a journal for the next epoch with a commit record must be applied
//     (again: applying is idempotent);
//   - without a commit record it is a staged epoch to resume;
//   - anything else means the files do not belong together.
func Decide(committed uint64, j JournalFacts) Action {
	switch {
	case !j.Exists:
		return Nothing
	case !j.HasBegin:
		return Discard
	case j.Epoch <= committed:
		return Discard
	case j.Epoch == committed+1 && j.HasCommit:
		return Replay
	case j.Epoch == committed+1:
		return Resume
	default:
		return Corrupt
	}
}
