package libvirtvm

import (
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/libvirtvm/lifecycle"
)

// TestWatcherTellsDecisionsInOrder: a Check's observation (made on the
// sender's goroutine) and an event (on the watcher's) step the machine
// one after the other; their notifications must come in the same order,
// or the status keeps the older decision. Here the observation's
// notification is slow: told after the event's, the status would say
// "not defined" for a domain the machine knows was destroyed.
func TestWatcherTellsDecisionsInOrder(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 15, 22, 31, 0, time.UTC)
	var mu sync.Mutex
	var told []string
	w := &Watcher{now: func() time.Time { return t0 }, log: slog.New(slog.DiscardHandler), changed: make(chan struct{})}
	observed := make(chan struct{})
	w.notify = func(d lifecycle.Decision) {
		if d.State.Why == "not defined" {
			close(observed)
			time.Sleep(50 * time.Millisecond)
		}
		mu.Lock()
		told = append(told, d.State.Why)
		mu.Unlock()
	}
	w.step(lifecycle.Event{Type: lifecycle.Started, At: t0.Add(-time.Minute)})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.step(lifecycle.Event{Type: lifecycle.Observed, State: lifecycle.Absent, At: t0})
	}()
	<-observed
	w.step(lifecycle.Event{Type: lifecycle.Stopped, Detail: lifecycle.StoppedDestroyed, At: t0.Add(time.Second)})
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if last := told[len(told)-1]; last != w.State().Why {
		t.Fatalf("told %q, last %q; the machine says %q", told, last, w.State().Why)
	}
}
