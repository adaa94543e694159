package units

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]Size{"0": 0, "4096": 4096, "512B": 512, "64KiB": 64 << 10, "64 KiB": 64 << 10, "8mib": 8 << 20, "1GiB": 1 << 30, "2TiB": 2 << 40}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "KiB", "1.5MiB", "-1", "8MB", "8M", "8 furlongs", "99999999999999999999", "20000000TiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q): no error", in)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, c := range []struct {
		in   string
		want float64
	}{
		{"100Mbit/s", 12.5e6}, {"1Gbit/s", 125e6}, {"500 kbit/s", 62500}, {"12MiB/s", 12 << 20}, {"2.5Gbit/s", 312.5e6}, {"800B/s", 800},
	} {
		got, err := ParseRate(c.in)
		if err != nil || float64(got) != c.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", c.in, float64(got), err, c.want)
		}
	}
	for _, bad := range []string{"", "100", "100Mbps", "100MB/s", "-1Mbit/s", "0bit/s", "fast"} {
		if _, err := ParseRate(bad); err == nil {
			t.Errorf("ParseRate(%q) accepted", bad)
		} else if !strings.Contains(err.Error(), "rate") {
			t.Errorf("ParseRate(%q): %v does not say what is wrong", bad, err)
		}
	}
}
