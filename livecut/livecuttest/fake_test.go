package livecuttest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/drsync/drsync/livecut/livecuttest"
	"github.com/drsync/drsync/qmp"
)

// recorder is a testing.TB that keeps what the fake reports.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestFakeStrict checks that a strict script fails the test on a command
// out of order or with the wrong arguments, and answers from the step.
func TestFakeStrict(t *testing.T) {
	rec := &recorder{TB: t}
	f := livecuttest.New(t, map[string]int64{"disk0": 1 << 20})
	f.T = rec
	f.Expect(
		livecuttest.Step{Cmd: "query-status", Reply: map[string]any{"status": "inmigrate"}},
		livecuttest.Step{Cmd: "blockdev-del", Args: livecuttest.ArgsHave(map[string]any{"node-name": "drsync-f1-0"}), Error: "Node drsync-f1-0 is in use"},
		livecuttest.Step{Cmd: "stop", Events: []qmp.Event{{Name: "X-EXTRA"}}},
	)
	m, err := f.Dial(context.Background(), "q.sock", qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sub := m.Subscribe("STOP", "X-EXTRA")
	var st struct{ Status string }
	if err := m.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "inmigrate" {
		t.Fatalf("scripted reply: %+v %v", st, err)
	}
	var ce *qmp.CommandError
	if err := m.Execute(ctx, "blockdev-del", map[string]any{"node-name": "disk0"}, nil); !errors.As(err, &ce) || len(rec.errs) != 1 {
		t.Fatalf("wrong arguments: %v, reported %q", err, rec.errs)
	}
	if err := m.Execute(ctx, "blockdev-del", map[string]any{"node-name": "drsync-f1-0"}, nil); !errors.As(err, &ce) || ce.Desc != "Node drsync-f1-0 is in use" {
		t.Fatalf("scripted error: %v", err)
	}
	if err := m.Execute(ctx, "cont", nil, nil); !errors.As(err, &ce) || len(rec.errs) != 2 {
		t.Fatalf("out of order: %v, reported %q", err, rec.errs)
	}
	if u := f.Unmet(); len(u) != 1 || u[0] != "stop" {
		t.Fatalf("unmet %v", u)
	}
	// The model answers a step without a reply, then the step's events follow.
	if err := m.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"STOP", "X-EXTRA"} {
		if e, err := sub.Next(ctx); err != nil || e.Name != want {
			t.Fatalf("want %s: %+v %v", want, e, err)
		}
	}
	if err := m.Execute(ctx, "query-status", nil, nil); !errors.As(err, &ce) || len(rec.errs) != 3 {
		t.Fatalf("after the script: %v, reported %q", err, rec.errs)
	}
}
