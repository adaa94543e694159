package livecuttest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
)

// Target is one running VM for TestMonitor: a connected monitor, and a way
// to end the VM behind its back.
type Target struct {
	Monitor livecut.Monitor
	// Kill ends the VM abruptly (its process killed).
	Kill func()
}

// TestMonitor checks the behaviours livecut relies on in a Monitor
// implementation. open starts a fresh, running VM (status "running")
// for each subtest and connects to it.
func TestMonitor(t *testing.T, open func(t *testing.T) Target) {
	ctx := func(t *testing.T) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		return ctx
	}

	t.Run("Version", func(t *testing.T) {
		m := open(t).Monitor
		if v := m.Version(); v.Major < 7 {
			t.Errorf("version %v: want QEMU 7 or newer", v)
		}
		if err := m.Err(); err != nil {
			t.Errorf("Err of a live connection: %v", err)
		}
	})

	t.Run("ExecuteReply", func(t *testing.T) {
		m := open(t).Monitor
		var st struct{ Status string }
		if err := m.Execute(ctx(t), "query-status", nil, &st); err != nil || st.Status != "running" {
			t.Fatalf("query-status: %+v, %v", st, err)
		}
		// A nil map is no arguments; nil reply ignores the return value.
		var none map[string]any
		if err := m.Execute(ctx(t), "query-status", none, nil); err != nil {
			t.Fatalf("query-status with a nil map: %v", err)
		}
	})

	t.Run("UnknownCommand", func(t *testing.T) {
		m := open(t).Monitor
		err := m.Execute(ctx(t), "x-drsync-no-such-command", nil, nil)
		var ce *qmp.CommandError
		if !errors.As(err, &ce) || ce.Command != "x-drsync-no-such-command" || ce.Desc == "" {
			t.Fatalf("unknown command: %v (want a *qmp.CommandError naming it)", err)
		}
		if errors.Is(err, qmp.ErrDisconnected) {
			t.Fatalf("a refused command is not a lost connection: %v", err)
		}
		// The session goes on.
		if err := m.Execute(ctx(t), "query-status", nil, nil); err != nil {
			t.Fatalf("after a refused command: %v", err)
		}
	})

	t.Run("Events", func(t *testing.T) {
		m := open(t).Monitor
		ctx := ctx(t)
		both := m.Subscribe("STOP", "RESUME")
		defer both.Close()
		resume := m.Subscribe("RESUME")
		defer resume.Close()
		for _, c := range []string{"stop", "cont"} {
			if err := m.Execute(ctx, c, nil, nil); err != nil {
				t.Fatalf("%s: %v", c, err)
			}
		}
		for _, want := range []string{"STOP", "RESUME"} {
			e, err := both.Next(ctx)
			if err != nil || e.Name != want {
				t.Fatalf("want %s: %+v, %v", want, e, err)
			}
			if e.At.IsZero() || time.Since(e.At) > time.Hour {
				t.Errorf("%s: timestamp %v", want, e.At)
			}
		}
		// A subscription sees only the events it names.
		if e, err := resume.Wait(ctx, func(e qmp.Event) bool { return true }); err != nil || e.Name != "RESUME" {
			t.Fatalf("RESUME-only subscription: %+v, %v", e, err)
		}
		// An event that does not come leaves Next to its context.
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if e, err := both.Next(short); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("no event due: %+v, %v", e, err)
		}
	})

	t.Run("EventsBeforeReplies", func(t *testing.T) {
		// A monitor that says it delivers events in order with replies
		// (livecut's early backup jobs rely on it to say "no event came")
		// has a command's events queued by the time the command returns.
		m := open(t).Monitor
		o, ok := m.(interface{ EventsBeforeReplies() bool })
		if !ok || !o.EventsBeforeReplies() {
			t.Skip("this monitor does not promise the order")
		}
		ctx := ctx(t)
		sub := m.Subscribe("STOP")
		defer sub.Close()
		if err := m.Execute(ctx, "stop", nil, nil); err != nil {
			t.Fatal(err)
		}
		now, cancel := context.WithCancel(ctx)
		cancel()
		if e, err := sub.Next(now); err != nil || e.Name != "STOP" {
			t.Fatalf("stop returned, its STOP not queued: %+v, %v", e, err)
		}
	})

	t.Run("ContextEnded", func(t *testing.T) {
		m := open(t).Monitor
		c, cancel := context.WithCancel(ctx(t))
		cancel()
		if err := m.Execute(c, "query-status", nil, nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("ended context: %v", err)
		}
		if err := m.Execute(ctx(t), "query-status", nil, nil); err != nil {
			t.Fatalf("after an ended context: %v", err)
		}
	})

	t.Run("VMExits", func(t *testing.T) {
		tg := open(t)
		m := tg.Monitor
		ctx := ctx(t)
		sub := m.Subscribe()
		defer sub.Close()
		tg.Kill()
		select {
		case <-m.Done():
		case <-ctx.Done():
			t.Fatal("Done was not closed after the VM died")
		}
		if err := m.Err(); !errors.Is(err, qmp.ErrDisconnected) {
			t.Fatalf("Err after the VM died: %v", err)
		}
		if err := m.Execute(ctx, "query-status", nil, nil); !errors.Is(err, qmp.ErrDisconnected) {
			t.Fatalf("Execute after the VM died: %v", err)
		}
		// Queued events drain first, then the subscription ends too.
		for range 100 {
			_, err := sub.Next(ctx)
			if err == nil {
				continue
			}
			if !errors.Is(err, qmp.ErrDisconnected) {
				t.Fatalf("subscription after the VM died: %v", err)
			}
			break
		}
	})

	t.Run("Close", func(t *testing.T) {
		m := open(t).Monitor
		if err := m.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Fatalf("second close: %v", err)
		}
		if err := m.Execute(ctx(t), "query-status", nil, nil); !errors.Is(err, qmp.ErrDisconnected) {
			t.Fatalf("Execute after Close: %v", err)
		}
	})
}
