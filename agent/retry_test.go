package agent

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/wire"
)

// scriptedRunner fails with the scripted errors in turn (nil: success).
type scriptedRunner struct {
	script []error
	calls  int
}

func (s *scriptedRunner) RunEpoch(ctx context.Context) (*sender.Result, error) {
	err := s.script[s.calls]
	s.calls++
	if err != nil {
		return nil, err
	}
	return &sender.Result{Epoch: uint64(s.calls)}, nil
}

func newTestRetrier(next epochRunner, retries int) (*retrier, *[]time.Duration) {
	var slept []time.Duration
	r := newRetrier(next, retries)
	r.sleep = func(ctx context.Context, d time.Duration) error {
		slept = append(slept, d)
		return ctx.Err()
	}
	return r, &slept
}

func TestRetrierBackoff(t *testing.T) {
	down := errors.New("network unreachable")
	script := slices.Repeat([]error{down}, 9)
	script = append(script, nil, down, nil)
	run := &scriptedRunner{script: script}
	r, slept := newTestRetrier(run, -1)
	var failures int
	r.onFailure = func(err error, wait time.Duration) { failures++ }

	if _, err := r.RunEpoch(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := time.Second
	want := []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 60 * s, 60 * s, 60 * s}
	if !slices.Equal(*slept, want) {
		t.Fatalf("backoff %v, want %v", *slept, want)
	}
	// A success resets the backoff.
	*slept = nil
	if _, err := r.RunEpoch(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(*slept, []time.Duration{s}) {
		t.Fatalf("after a success, backoff %v, want [1s]", *slept)
	}
	if failures != 10 || run.calls != 12 {
		t.Fatalf("%d failures reported, %d calls", failures, run.calls)
	}
}

func TestRetrierPermanentError(t *testing.T) {
	refused := &wire.Error{Code: wire.ErrUnauthorized, Message: "not yours"}
	run := &scriptedRunner{script: []error{errors.New("blip"), refused, nil}}
	r, slept := newTestRetrier(run, -1)
	var last time.Duration = -1
	r.onFailure = func(err error, wait time.Duration) { last = wait }
	_, err := r.RunEpoch(context.Background())
	if !errors.Is(err, refused) {
		t.Fatalf("got %v, want the refusal", err)
	}
	if run.calls != 2 || len(*slept) != 1 || last != 0 {
		t.Fatalf("%d calls, slept %v, last wait %s: a refusal must stop at once", run.calls, *slept, last)
	}
}

func TestRetrierLimit(t *testing.T) {
	down := errors.New("down")
	run := &scriptedRunner{script: slices.Repeat([]error{down}, 10)}
	r, slept := newTestRetrier(run, 3)
	if _, err := r.RunEpoch(context.Background()); !errors.Is(err, down) {
		t.Fatalf("got %v", err)
	}
	if run.calls != 4 || len(*slept) != 3 {
		t.Fatalf("%d calls and %d pauses; want 1 attempt + 3 retries", run.calls, len(*slept))
	}
}

func TestRetrierStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	run := &scriptedRunner{script: slices.Repeat([]error{errors.New("down")}, 10)}
	r, _ := newTestRetrier(run, -1)
	r.sleep = func(context.Context, time.Duration) error { cancel(); return context.Canceled }
	if _, err := r.RunEpoch(ctx); err == nil {
		t.Fatal("no error after cancel")
	}
	if run.calls != 1 {
		t.Fatalf("%d calls after cancel", run.calls)
	}
}

// An epoch cut short by a shutdown is not a failure: status and metrics
// must not count it, and the next start resumes it.
func TestRetrierShutdownIsNotAFailure(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r, _ := newTestRetrier(&scriptedRunner{script: []error{errors.New("connection closed locally")}}, -1)
	failures := 0
	r.onFailure = func(error, time.Duration) { failures++ }
	if _, err := r.RunEpoch(ctx); err == nil {
		t.Fatal("no error")
	}
	if failures != 0 {
		t.Fatalf("a shutdown counted as %d failures", failures)
	}
}
