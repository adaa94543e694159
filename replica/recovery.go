package replica

// recoveryAction is what opening a replica does with the journal it finds.
type recoveryAction int

const (
	recoverNothing recoveryAction = iota // no journal
	recoverDiscard                       // journal of an epoch already applied, or empty: delete it
	recoverResume                        // staged epoch without commit: keep it, resume appending
	recoverReplay                        // committed epoch not (fully) applied: apply it again
	recoverCorrupt                       // journal that cannot follow the manifest: stop, operator needed
)

func (a recoveryAction) String() string {
	return [...]string{"nothing", "discard", "resume", "replay", "corrupt"}[a]
}

// journalFacts is what recovery needs to know of a scanned journal.
type journalFacts struct {
	exists    bool
	hasBegin  bool
	epoch     uint64 // of its EpochBegin
	hasCommit bool
}

// decideRecovery is the journal recovery rule. The replica's images and
// tables are only written after a commit record is durable, and the manifest
// is replaced only after they are synced, so:
//   - a journal for an epoch the manifest already has was fully applied
//     before the crash hit its removal: discard it;
//   - a journal for the next epoch with a commit record must be applied
//     (again: applying is idempotent);
//   - without a commit record it is a staged epoch to resume;
//   - anything else means the files do not belong together.
func decideRecovery(committed uint64, j journalFacts) recoveryAction {
	switch {
	case !j.exists:
		return recoverNothing
	case !j.hasBegin:
		return recoverDiscard
	case j.epoch <= committed:
		return recoverDiscard
	case j.epoch == committed+1 && j.hasCommit:
		return recoverReplay
	case j.epoch == committed+1:
		return recoverResume
	default:
		return recoverCorrupt
	}
}
