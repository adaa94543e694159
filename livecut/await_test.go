package livecut

import (
	"context"
	"testing"
	"time"

	"github.com/drsync/drsync/qmp"
)

// queued is a qmp.Events of events queued already.
type queued struct{ q []qmp.Event }

func (e *queued) Next(ctx context.Context) (qmp.Event, error) {
	if len(e.q) == 0 {
		<-ctx.Done()
		return qmp.Event{}, ctx.Err()
	}
	ev := e.q[0]
	e.q = e.q[1:]
	return ev, nil
}

func (e *queued) Wait(ctx context.Context, match func(qmp.Event) bool) (qmp.Event, error) {
	return qmp.WaitFor(ctx, e, match)
}

func (e *queued) Close() {}

// TestAwaitMigrationStopInstant: the cut's instant is QEMU's STOP,
// whether it comes before the migration's completion (QEMU stopped the
// guest, or the cut's stop did before the migration completed) or after
// it (the stop lost its race with a completing migration: QEMU marks the
// guest paused, lets go of its lock while the vCPUs stop, and the
// migration completes in between without stopping it; the STOP follows).
func TestAwaitMigrationStopInstant(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 8, 2, 54, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	mig := func(st string, ms int) qmp.Event {
		return qmp.Event{Name: "MIGRATION", Data: map[string]any{"status": st}, At: at(ms)}
	}
	stop := func(ms int) qmp.Event { return qmp.Event{Name: "STOP", At: at(ms)} }
	for _, tc := range []struct {
		name   string
		events []qmp.Event
		want   time.Time
	}{
		{"stop before completion", []qmp.Event{mig("setup", 0), mig("active", 1), stop(100), mig("completed", 104)}, at(100)},
		{"stop after completion", []qmp.Event{mig("setup", 0), mig("active", 1), mig("completed", 104), stop(105)}, at(105)},
		{"no stop at all", []qmp.Event{mig("setup", 0), mig("active", 1), mig("completed", 104)}, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stopAt time.Time
			ctx := context.Background()
			if _, err := (&Source{}).awaitMigration(ctx, ctx, nil, &queued{tc.events}, &stopAt); err != nil {
				t.Fatal(err)
			}
			if !stopAt.Equal(tc.want) {
				t.Errorf("instant %v, want %v", stopAt, tc.want)
			}
		})
	}
}
