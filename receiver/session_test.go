package receiver

import (
	"strings"
	"testing"

	"github.com/drsync/drsync/wire"
)

func TestSessionOrder(t *testing.T) {
	hello := &wire.Hello{MinVersion: 1, MaxVersion: 1, VM: "vm"}
	begin := &wire.EpochBegin{Epoch: 1}
	item := &wire.DiskExtent{Data: make([]byte, 1000)}
	commit := &wire.EpochCommit{Epoch: 1}
	for _, tc := range []struct {
		name   string
		frames []wire.Frame
		steps  []step
		err    string // error expected at the last frame
	}{
		{"full epoch", []wire.Frame{hello, begin, item, item, commit}, []step{stepHello, stepBegin, stepItem, stepItem, stepCommit}, ""},
		{"tables between epochs", []wire.Frame{hello, &wire.TableRequest{}, begin, commit, &wire.TableRequest{}}, []step{stepHello, stepTables, stepBegin, stepCommit, stepTables}, ""},
		{"tables inside an epoch", []wire.Frame{hello, begin, &wire.TableRequest{}}, []step{stepHello, stepBegin}, "TableRequest inside epoch 1"},
		{"two epochs", []wire.Frame{hello, begin, commit, begin, item, commit}, []step{stepHello, stepBegin, stepCommit, stepBegin, stepItem, stepCommit}, ""},
		{"no hello", []wire.Frame{begin}, nil, "expected Hello, got EpochBegin"},
		{"item before begin", []wire.Frame{hello, item}, []step{stepHello}, "expected EpochBegin, got DiskExtent"},
		{"begin inside epoch", []wire.Frame{hello, begin, begin}, []step{stepHello, stepBegin}, "EpochBegin inside epoch 1"},
		{"second hello", []wire.Frame{hello, hello}, []step{stepHello}, "expected EpochBegin, got Hello"},
		{"ack from sender", []wire.Frame{hello, begin, &wire.Ack{}}, []step{stepHello, stepBegin}, "Ack inside epoch"},
		{"future version only", []wire.Frame{&wire.Hello{MinVersion: 2, MaxVersion: 3, VM: "vm"}}, nil, "sender speaks protocol 2..3"},
	} {
		s := newSession(1 << 20)
		for i, f := range tc.frames {
			st, _, err := s.next(f)
			last := i == len(tc.frames)-1
			if err != nil {
				if !last || tc.err == "" || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("%s: frame %d (%s): %v", tc.name, i, f.Type(), err)
				}
				break
			}
			if last && tc.err != "" {
				t.Errorf("%s: no error, want %q", tc.name, tc.err)
			}
			if st != tc.steps[i] {
				t.Errorf("%s: frame %d: step %d, want %d", tc.name, i, st, tc.steps[i])
			}
		}
	}
}

func TestSessionAcksAfterAckBytes(t *testing.T) {
	s := newSession(10 << 10)
	s.next(&wire.Hello{MinVersion: 1, MaxVersion: 1, VM: "vm"})
	s.next(&wire.EpochBegin{Epoch: 1})
	syncs := 0
	for range 100 {
		_, sync, err := s.next(&wire.DiskExtent{Data: make([]byte, 1024)})
		if err != nil {
			t.Fatal(err)
		}
		if sync {
			syncs++
		}
	}
	// 100 items of ~1 KiB with a 10 KiB window: about ten acknowledgements.
	if syncs < 8 || syncs > 10 {
		t.Fatalf("%d syncs for 100 KiB at a 10 KiB window", syncs)
	}
}
