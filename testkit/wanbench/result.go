package wanbench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/wanemu"
)

// Link is one emulated WAN link of the benchmark; Settings apply to each
// direction.
type Link struct {
	Name     string
	Settings wanemu.Settings
}

// bytesPerSec is the link's rate in bytes per second, 0 if unlimited.
func (l Link) bytesPerSec() float64 { return float64(l.Settings.RateBitsPerSec) / 8 }

// Links are the benchmark's two links: a lossy 100 Mbit/s link with a
// 40 ms round trip, and a 1 Gbit/s link with a 10 ms round trip.
func Links() []Link {
	return []Link{
		{Name: "100 Mbit/s, 40 ms RTT, 0.1% loss", Settings: wanemu.Settings{
			Delay: 20 * time.Millisecond, RateBitsPerSec: 100e6, LossProb: 0.001}},
		{Name: "1 Gbit/s, 10 ms RTT", Settings: wanemu.Settings{
			Delay: 5 * time.Millisecond, RateBitsPerSec: 1e9}},
	}
}

// wireBytes is what crossed the emulated link, both directions, whole IP
// packets with their headers.
func wireBytes(s wanemu.Stats) int64 {
	return int64(s.AtoB.Forwarded.Bytes + s.BtoA.Forwarded.Bytes)
}

// Kind groups the rows of the table; the ratio column compares every row
// with the best KindQEMU row of its link.
type Kind int

const (
	KindOther Kind = iota // the replication engine under test, or anything else
	KindQEMU              // a QEMU migration baseline
	KindRsync             // the rsync baseline
)

// Result is one row of the benchmark table: one tool over one link.
type Result struct {
	Tool string // e.g. "QEMU precopy + xbzrle, drive-mirror"
	Kind Kind
	Link string // Link.Name

	// InitialSync is the time from an empty far side to a complete copy.
	InitialSync time.Duration
	// InitialBytes crossed the link, both directions, during InitialSync.
	InitialBytes int64
	// SteadyBytesPerEpoch crossed the link, both directions, for one
	// epoch after the initial sync.
	SteadyBytesPerEpoch int64
	// EpochInterval is the time between consistent copies.
	EpochInterval time.Duration
	// RPO is the worst lag of the far copy: EpochInterval plus the time to
	// ship one epoch.
	RPO time.Duration
	// Pause is how long the guest is stopped per epoch; 0 where the tool
	// never stops it.
	Pause time.Duration
	// Goodput is the link's use during the initial sync: InitialBytes per
	// second of InitialSync over the link rate (0 for an unlimited link).
	Goodput float64
	// Note qualifies the row, e.g. what the copy lacks.
	Note string
}

// goodput is InitialBytes over InitialSync as a fraction of the link rate.
func goodput(bytes int64, d time.Duration, l Link) float64 {
	if d <= 0 || l.bytesPerSec() <= 0 {
		return 0
	}
	return float64(bytes) / d.Seconds() / l.bytesPerSec()
}

// WriteTable writes rows as a Markdown table, in their order, with sizes
// in MB (10^6 bytes), times in s and pauses in ms. Its "vs best QEMU"
// column is each row's InitialBytes over the smallest InitialBytes of the
// QEMU rows of the same link.
func WriteTable(w io.Writer, rows []Result) error {
	best := map[string]int64{}
	for _, r := range rows {
		if r.Kind != KindQEMU || r.InitialBytes <= 0 {
			continue
		}
		if b, ok := best[r.Link]; !ok || r.InitialBytes < b {
			best[r.Link] = r.InitialBytes
		}
	}
	var b strings.Builder
	b.WriteString("| Tool | Link | Initial sync | Initial bytes | vs best QEMU | Bytes/epoch | Epoch | RPO | Pause | Goodput | Note |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		ratio := "–"
		if q, ok := best[r.Link]; ok && r.InitialBytes > 0 {
			ratio = fmt.Sprintf("%.2f×", float64(r.InitialBytes)/float64(q))
		}
		gp := "–"
		if r.Goodput > 0 {
			gp = fmt.Sprintf("%.0f%%", 100*r.Goodput)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			cell(r.Tool), cell(r.Link), seconds(r.InitialSync), megabytes(r.InitialBytes), ratio,
			megabytes(r.SteadyBytesPerEpoch), seconds(r.EpochInterval), seconds(r.RPO),
			millis(r.Pause), gp, cell(r.Note))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// cell keeps text from breaking the table.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.Join(strings.Fields(s), " ")
}

func megabytes(n int64) string {
	switch {
	case n < 0:
		return "–"
	case n < 10e6:
		return fmt.Sprintf("%.2f MB", float64(n)/1e6)
	default:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	}
}

func seconds(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func millis(d time.Duration) string {
	if d == 0 {
		return "0 ms"
	}
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

// RunBaselines runs every baseline over link, one after the other: the
// QEMU modes, then rsync. It returns the rows measured so far and the
// first error.
func RunBaselines(ctx context.Context, t testing.TB, em *wanemu.Emulator, link Link, g GuestSpec, epoch time.Duration) ([]Result, error) {
	t.Helper()
	var rows []Result
	for _, mode := range QEMUModes() {
		r, err := RunQEMU(ctx, t, em, link, g, mode, epoch)
		if err != nil {
			return rows, err
		}
		rows = append(rows, r)
	}
	r, err := RunRsync(ctx, t, em, link, g, epoch)
	if err != nil {
		return rows, err
	}
	return append(rows, r), nil
}
