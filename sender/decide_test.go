package sender

import (
	"testing"

	"github.com/drsync/drsync/wire"
)

func TestChooseBase(t *testing.T) {
	committed := &Index{Epoch: 4, StateID: 40}
	pending := &Index{Epoch: 5, StateID: 50}
	for _, tc := range []struct {
		name string
		pos  wire.Position
		c, p *Index
		want baseChoice
	}{
		{"empty replica, no state", wire.Position{}, nil, nil, baseFresh},
		{"empty replica, stale state", wire.Position{}, committed, nil, baseFresh},
		{"in step", wire.Position{Committed: 4, StateID: 40}, committed, nil, baseCommitted},
		{"commit landed, ack lost", wire.Position{Committed: 5, StateID: 50}, committed, pending, basePending},
		{"commit did not land", wire.Position{Committed: 4, StateID: 40}, committed, pending, baseCommitted},
		{"replica replaced", wire.Position{Committed: 4, StateID: 41}, committed, pending, baseUnknown},
		{"sender state lost", wire.Position{Committed: 9, StateID: 90}, nil, nil, baseUnknown},
		{"replica ahead of both", wire.Position{Committed: 6, StateID: 60}, committed, pending, baseUnknown},
	} {
		if got := chooseBase(tc.pos, tc.c, tc.p); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestResumeFrom(t *testing.T) {
	p := &Plan{Epoch: 7, ID: 99, Items: make([]PlanItem, 10)}
	for _, tc := range []struct {
		name string
		pos  wire.Position
		want uint64
	}{
		{"nothing staged", wire.Position{Committed: 6}, 0},
		{"same plan", wire.Position{Committed: 6, StagedEpoch: 7, StagedPlan: 99, StagedDurable: 4}, 4},
		{"other plan", wire.Position{Committed: 6, StagedEpoch: 7, StagedPlan: 98, StagedDurable: 4}, 0},
		{"other epoch", wire.Position{Committed: 5, StagedEpoch: 6, StagedPlan: 99, StagedDurable: 4}, 0},
		{"all durable", wire.Position{Committed: 6, StagedEpoch: 7, StagedPlan: 99, StagedDurable: 10}, 10},
		{"more durable than items", wire.Position{Committed: 6, StagedEpoch: 7, StagedPlan: 99, StagedDurable: 11}, 0},
	} {
		if got := resumeFrom(p, tc.pos); got != tc.want {
			t.Errorf("%s: got %d, want %d", tc.name, got, tc.want)
		}
	}
}
