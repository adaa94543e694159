package epochctl

import (
	"testing"
	"time"
)

// SetConfig changes the target for the next decision and keeps what was
// observed; a configuration that does not validate changes nothing.
func TestSetConfig(t *testing.T) {
	c := mustNew(t, Config{RPOTarget: time.Minute})
	c.Observe(Observation{Cut: time.Unix(100, 0), Committed: time.Unix(101, 0), Interval: 10 * time.Second,
		ChangedBytes: 1 << 20, WireBytes: 1 << 20, SendTime: time.Second})
	if err := c.SetConfig(Config{RPOTarget: -time.Second}); err == nil {
		t.Fatal("a negative target accepted")
	}
	if got := c.Config().RPOTarget; got != time.Minute {
		t.Fatalf("a refused config changed the target to %s", got)
	}
	if err := c.SetConfig(Config{RPOTarget: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if got := c.Config().RPOTarget; got != 10*time.Minute {
		t.Errorf("target %s after SetConfig, want 10m", got)
	}
	if c.observed != 1 {
		t.Errorf("%d observations kept, want 1", c.observed)
	}
	if d := c.Decide(time.Unix(101, 0)); d.Interval <= 0 {
		t.Errorf("decision after SetConfig: %+v", d)
	}
}
