package epochctl_test

import (
	"fmt"
	"time"

	"github.com/drsync/drsync/epochctl"
	"github.com/drsync/drsync/wire"
)

// The sender's loop: observe each committed epoch, ask for the next one,
// cut at NextCut with the level chosen.
func Example() {
	ctl, err := epochctl.New(epochctl.Config{
		RPOTarget:   time.Minute,
		MinInterval: 5 * time.Second,
		StartLevel:  epochctl.Level(wire.CompressFast),
	})
	if err != nil {
		panic(err)
	}
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cut := t0
	for range 5 {
		// A 10 s epoch: 60 MB changed, 30 MB on the wire in 6 s, committed
		// 6.5 s after its cut.
		cut = cut.Add(10 * time.Second)
		ctl.Observe(epochctl.Observation{
			Cut: cut, Committed: cut.Add(6500 * time.Millisecond), Interval: 10 * time.Second,
			ChangedBytes: 60e6, WireBytes: 30e6, SendTime: 6 * time.Second, CPUTime: 150 * time.Millisecond,
			Level: epochctl.LevelFast,
		})
	}
	d := ctl.Decide(cut.Add(6500 * time.Millisecond))
	fmt.Println("cut in", d.NextCut.Sub(cut), "at", wire.Compression(d.Level), "breach:", d.Breach)
	fmt.Println(d.Reason)
	// Output:
	// cut in 6.5s at fast breach: false
	// headroom: 5s epochs at fast keep the sender 70% busy; predicted lag 8.5s (target 1m0s)
}
