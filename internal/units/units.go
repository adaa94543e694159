package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Size is a byte count written as "64KiB", "8MiB", "1GiB" or a plain
// integer. Only binary units are accepted: "MB" is refused rather than
// guessed at.
type Size uint64

var sizeUnits = map[string]uint64{
	"":    1,
	"b":   1,
	"kib": 1 << 10,
	"mib": 1 << 20,
	"gib": 1 << 30,
	"tib": 1 << 40,
}

// ParseSize parses a Size.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: want a whole number with an optional unit B, KiB, MiB, GiB or TiB, e.g. \"64KiB\"", s)
	}
	n, err := strconv.ParseUint(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: number out of range", s)
	}
	unit := strings.ToLower(strings.TrimSpace(t[i:]))
	mul, ok := sizeUnits[unit]
	if !ok {
		hint := ""
		switch unit {
		case "k", "kb", "m", "mb", "g", "gb", "t", "tb":
			hint = " (decimal and one-letter units are ambiguous; write KiB, MiB, GiB or TiB)"
		}
		return 0, fmt.Errorf("size %q: unknown unit %q%s; want B, KiB, MiB, GiB or TiB", s, t[i:], hint)
	}
	if n > math.MaxUint64/mul {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return Size(n * mul), nil
}

// UnmarshalText implements encoding.TextUnmarshaler for the TOML decoder.
func (z *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*z = v
	return nil
}

func (z Size) String() string { return FormatBytes(uint64(z)) }

// Rate is a bandwidth in bytes per second, written as network links are
// described, in bits ("100Mbit/s", "1Gbit/s", "500kbit/s", decimal
// prefixes), or in binary bytes ("12MiB/s").
type Rate float64

var rateUnits = map[string]float64{
	"bit/s":  1.0 / 8,
	"kbit/s": 1e3 / 8,
	"mbit/s": 1e6 / 8,
	"gbit/s": 1e9 / 8,
	"b/s":    1,
	"kib/s":  1 << 10,
	"mib/s":  1 << 20,
	"gib/s":  1 << 30,
}

// ParseRate parses a Rate.
func ParseRate(s string) (Rate, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	n, err := strconv.ParseFloat(t[:i], 64)
	if i == 0 || err != nil {
		return 0, fmt.Errorf("rate %q: want a number and a unit such as \"100Mbit/s\", \"1Gbit/s\" or \"12MiB/s\"", s)
	}
	mul, ok := rateUnits[strings.ToLower(strings.TrimSpace(t[i:]))]
	if !ok {
		return 0, fmt.Errorf("rate %q: unknown unit %q; want bit/s, kbit/s, Mbit/s, Gbit/s, B/s, KiB/s, MiB/s or GiB/s", s, t[i:])
	}
	r := n * mul
	if !(r > 0) || math.IsInf(r, 0) {
		return 0, fmt.Errorf("rate %q: must be positive", s)
	}
	return Rate(r), nil
}

// UnmarshalText implements encoding.TextUnmarshaler for the TOML decoder.
func (r *Rate) UnmarshalText(b []byte) error {
	v, err := ParseRate(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

func (r Rate) String() string { return FormatRate(float64(r)) }

// FormatRate renders bytes/s as bits per second, as links are rated.
func FormatRate(bps float64) string {
	b := bps * 8
	switch {
	case b >= 1e9:
		return fmt.Sprintf("%.3g Gbit/s", b/1e9)
	case b >= 1e6:
		return fmt.Sprintf("%.3g Mbit/s", b/1e6)
	case b >= 1e3:
		return fmt.Sprintf("%.3g kbit/s", b/1e3)
	}
	return fmt.Sprintf("%.0f bit/s", b)
}

// Duration is a time.Duration written as "30s", "15m" or "1h30m".
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler for the TOML decoder.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("duration %q: want a number with a unit, e.g. \"30s\", \"15m\" or \"1h30m\"", b)
	}
	if v < 0 {
		return fmt.Errorf("duration %q: must not be negative", b)
	}
	*d = Duration(v)
	return nil
}

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// FormatBytes renders n with a binary unit, for people.
func FormatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	if n%div == 0 {
		return fmt.Sprintf("%d %ciB", n/div, "KMGTPE"[exp])
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Set implements flag.Value, so sizes read the same on command lines.
func (z *Size) Set(s string) error { return z.UnmarshalText([]byte(s)) }
