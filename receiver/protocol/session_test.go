package protocol

import (
	"fmt"
	"strings"
	"testing"

	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

func TestSessionOrder(t *testing.T) {
	hello := &wire.Hello{MinVersion: 1, MaxVersion: 1, VM: "vm"}
	begin := &wire.EpochBegin{Epoch: 1}
	item := &wire.DiskExtent{Data: make([]byte, 1000)}
	commit := &wire.EpochCommit{Epoch: 1}
	hello2 := &wire.Hello{MinVersion: 1, MaxVersion: wire.VersionGroups, VM: "vm"}
	tagged := func(member string) *wire.EpochBegin {
		return &wire.EpochBegin{Epoch: 1, Group: &vmspec.GroupCut{Group: "g", Cut: 1, Members: []string{member}}}
	}
	hello3 := &wire.Hello{MinVersion: 1, MaxVersion: wire.VersionBlobs, VM: "vm"}
	hello4 := &wire.Hello{MinVersion: 1, MaxVersion: wire.VersionOpen, VM: "vm"}
	open := &wire.EpochBegin{Epoch: 1, Open: true}
	blob := &wire.EpochBegin{Epoch: 1, Targets: []wire.Target{{Kind: vmspec.KindBlob, Name: vmspec.BlobDomainXML, Size: vmspec.BlobSize, BlockSize: vmspec.BlobBlockSize}}}
	for _, tc := range []struct {
		name   string
		frames []wire.Frame
		steps  []Step
		err    string // error expected at the last frame
	}{
		{"full epoch", []wire.Frame{hello, begin, item, item, commit}, []Step{StepHello, StepBegin, StepItem, StepItem, StepCommit}, ""},
		{"tables between epochs", []wire.Frame{hello, &wire.TableRequest{}, begin, commit, &wire.TableRequest{}}, []Step{StepHello, StepTables, StepBegin, StepCommit, StepTables}, ""},
		{"tables inside an epoch", []wire.Frame{hello, begin, &wire.TableRequest{}}, []Step{StepHello, StepBegin}, "TableRequest inside epoch 1"},
		{"two epochs", []wire.Frame{hello, begin, commit, begin, item, commit}, []Step{StepHello, StepBegin, StepCommit, StepBegin, StepItem, StepCommit}, ""},
		{"no hello", []wire.Frame{begin}, nil, "expected Hello, got EpochBegin"},
		{"item before begin", []wire.Frame{hello, item}, []Step{StepHello}, "expected EpochBegin, got DiskExtent"},
		{"begin inside epoch", []wire.Frame{hello, begin, begin}, []Step{StepHello, StepBegin}, "EpochBegin inside epoch 1"},
		{"second hello", []wire.Frame{hello, hello}, []Step{StepHello}, "expected EpochBegin, got Hello"},
		{"ack from sender", []wire.Frame{hello, begin, &wire.Ack{}}, []Step{StepHello, StepBegin}, "Ack inside epoch"},
		{"future version only", []wire.Frame{&wire.Hello{MinVersion: wire.Version + 1, MaxVersion: wire.Version + 2, VM: "vm"}}, nil, fmt.Sprintf("sender speaks protocol %d..%d", wire.Version+1, wire.Version+2)},
		{"open epoch", []wire.Frame{hello4, open, item, commit}, []Step{StepHello, StepBegin, StepItem, StepCommit}, ""},
		{"open epoch on version 3", []wire.Frame{hello3, open}, []Step{StepHello}, "epoch 1 is open on a protocol 3 connection"},
		{"blob target", []wire.Frame{hello3, blob}, []Step{StepHello, StepBegin}, ""},
		{"blob target on version 2", []wire.Frame{hello2, blob}, []Step{StepHello}, "blob target on a protocol 2 connection"},
		{"group tag", []wire.Frame{hello2, tagged("vm")}, []Step{StepHello, StepBegin}, ""},
		{"group tag on version 1", []wire.Frame{hello, tagged("vm")}, []Step{StepHello}, "group tag on a protocol 1 connection"},
		{"group tag of another vm", []wire.Frame{hello2, tagged("other")}, []Step{StepHello}, "vm carries the cut but is not a member"},
	} {
		s := New(1 << 20)
		for i, f := range tc.frames {
			st, _, err := s.Next(f)
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
	s := New(10 << 10)
	s.Next(&wire.Hello{MinVersion: 1, MaxVersion: 1, VM: "vm"})
	s.Next(&wire.EpochBegin{Epoch: 1})
	syncs := 0
	for range 100 {
		_, sync, err := s.Next(&wire.DiskExtent{Data: make([]byte, 1024)})
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
