package main

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
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

func (z Size) String() string { return formatBytes(uint64(z)) }

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

func (r Rate) String() string { return formatRate(float64(r)) }

// formatRate renders bytes/s as bits per second, as links are rated.
func formatRate(bps float64) string {
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

// IdentityConfig is the [identity] table: this side's key pair, as written
// by drsync keygen.
type IdentityConfig struct {
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
}

func (c *IdentityConfig) validate(file string) error {
	if c.Cert == "" {
		return &configError{file, "identity.cert", errors.New("missing: the certificate file written by \"drsync keygen\"")}
	}
	if c.Key == "" {
		return &configError{file, "identity.key", errors.New("missing: the private key file written by \"drsync keygen\"")}
	}
	return nil
}

func (c *IdentityConfig) resolve(dir string) {
	c.Cert = resolvePath(dir, c.Cert)
	c.Key = resolvePath(dir, c.Key)
}

// load reads the key pair.
func (c *IdentityConfig) load(file string) (tlsid.Identity, error) {
	// Checked one by one so that the message names the key to fix.
	for _, f := range []struct{ key, path string }{{"identity.cert", c.Cert}, {"identity.key", c.Key}} {
		if _, err := os.Stat(f.path); err != nil {
			return tlsid.Identity{}, &configError{file, f.key, fmt.Errorf("%w (create the pair with drsync keygen)", err)}
		}
	}
	id, err := tlsid.LoadIdentity(c.Cert, c.Key)
	if err != nil {
		return tlsid.Identity{}, &configError{file, "identity", err}
	}
	return id, nil
}

// decodeStrict decodes the TOML file at path into v and refuses unknown
// keys, which are nearly always typos of a setting that would otherwise be
// silently ignored. It returns the file's directory, against which relative
// paths in it are resolved.
func decodeStrict(path string, v any) (dir string, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", &configError{path, "", err}
	}
	b, err := os.ReadFile(abs)
	if err != nil {
		return "", &configError{path, "", fmt.Errorf("cannot read: %w", err)}
	}
	md, err := toml.NewDecoder(bytes.NewReader(b)).Decode(v)
	if err != nil {
		return "", &configError{path, "", err}
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		msg := "unknown key; check its spelling and section (testdata/configs has every key, explained)"
		if len(keys) > 1 {
			msg += "; other unknown keys: " + strings.Join(keys[1:], ", ")
		}
		return "", &configError{path, keys[0], errors.New(msg)}
	}
	return filepath.Dir(abs), nil
}

// resolvePath makes p absolute relative to dir, the config file's directory,
// so that a config means the same whatever the working directory.
func resolvePath(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// Idle timeout bounds. Below the minimum a few lost packets would kill
// healthy connections; above the maximum a dead link goes unnoticed for
// too long. Zero means the transport's default.
const (
	minIdleTimeout = time.Second
	maxIdleTimeout = 10 * time.Minute
)

func checkIdleTimeout(d Duration) error {
	if d != 0 && (d.D() < minIdleTimeout || d.D() > maxIdleTimeout) {
		return fmt.Errorf("%s is outside %s..%s (default %s)", d, minIdleTimeout, maxIdleTimeout, transport.DefaultIdleTimeout)
	}
	return nil
}

// checkHostPort checks an address of the form host:port. allowZero admits
// port 0 (listen on any free port).
func checkHostPort(addr string, allowZero bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want host:port, e.g. \"192.0.2.10:7447\" or \"[2001:db8::1]:7447\"", addr)
	}
	if strings.ContainsAny(host, " \t") {
		return fmt.Errorf("address %q: host contains spaces", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !allowZero) {
		return fmt.Errorf("address %q: port %q is not a valid port number (1-65535)", addr, port)
	}
	return nil
}

// formatBytes renders n with a binary unit, for people.
func formatBytes(n uint64) string {
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
