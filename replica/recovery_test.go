package replica

import "testing"

func TestDecideRecovery(t *testing.T) {
	for _, tc := range []struct {
		name      string
		committed uint64
		j         journalFacts
		want      recoveryAction
	}{
		{"no journal", 3, journalFacts{}, recoverNothing},
		{"header only", 3, journalFacts{exists: true}, recoverDiscard},
		{"already applied, journal not yet removed", 3, journalFacts{exists: true, hasBegin: true, epoch: 3, hasCommit: true}, recoverDiscard},
		{"older than the replica", 3, journalFacts{exists: true, hasBegin: true, epoch: 2}, recoverDiscard},
		{"committed, not applied", 3, journalFacts{exists: true, hasBegin: true, epoch: 4, hasCommit: true}, recoverReplay},
		{"staged", 3, journalFacts{exists: true, hasBegin: true, epoch: 4}, recoverResume},
		{"first epoch staged", 0, journalFacts{exists: true, hasBegin: true, epoch: 1}, recoverResume},
		{"from the future", 3, journalFacts{exists: true, hasBegin: true, epoch: 6, hasCommit: true}, recoverCorrupt},
	} {
		if got := decideRecovery(tc.committed, tc.j); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}
