package recovery

import "testing"

func TestDecideRecovery(t *testing.T) {
	for _, tc := range []struct {
		name      string
		committed uint64
		j         JournalFacts
		want      Action
	}{
		{"no journal", 3, JournalFacts{}, Nothing},
		{"header only", 3, JournalFacts{Exists: true}, Discard},
		{"already applied, journal not yet removed", 3, JournalFacts{Exists: true, HasBegin: true, Epoch: 3, HasCommit: true}, Discard},
		{"older than the replica", 3, JournalFacts{Exists: true, HasBegin: true, Epoch: 2}, Discard},
		{"committed, not applied", 3, JournalFacts{Exists: true, HasBegin: true, Epoch: 4, HasCommit: true}, Replay},
		{"staged", 3, JournalFacts{Exists: true, HasBegin: true, Epoch: 4}, Resume},
		{"first epoch staged", 0, JournalFacts{Exists: true, HasBegin: true, Epoch: 1}, Resume},
		{"from the future", 3, JournalFacts{Exists: true, HasBegin: true, Epoch: 6, HasCommit: true}, Corrupt},
	} {
		if got := Decide(tc.committed, tc.j); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}
