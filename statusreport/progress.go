package statusreport

import (
	"fmt"
	"strings"
	"time"

	"github.com/drsync/drsync/sender"
)

// ProgressSegment is one VM's part of the sender's progress line:
// "web-1 [=====>    ]  45% 120.3/266.0 MB 35.2 MB/s" ("266.0+" while the
// epoch is still being planned), for an epoch that
// started at start; graphic draws the bar (left out when several VMs
// share the line).
func ProgressSegment(vm string, p sender.Progress, start, now time.Time, graphic bool) string {
	const width = 24
	frac := 1.0
	if p.AllBytes > 0 {
		// Clamped: a display must never be what stops a sender, whatever
		// the counts it is handed say.
		frac = min(1, max(0, float64(p.SentBytes)/float64(p.AllBytes)))
	}
	rate := 0.0
	if el := now.Sub(start).Seconds(); el > 0 {
		rate = float64(p.SentBytes) / el / 1e6
	}
	var sb strings.Builder
	sb.WriteString(vm)
	if graphic {
		filled := int(frac * width)
		sb.WriteString(" [" + strings.Repeat("=", filled) + strings.Repeat(" ", width-filled) + "]")
	}
	more := "" // while planned, the total grows
	if p.Planning {
		more = "+"
	}
	fmt.Fprintf(&sb, " %3.0f%% %.1f/%.1f%s MB %.1f MB/s", 100*frac, float64(p.SentBytes)/1e6, float64(p.AllBytes)/1e6, more, rate)
	return sb.String()
}
