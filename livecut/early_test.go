package livecut

import (
	"strings"
	"testing"
)

// TestEarlyBackoff: after an overtaken early cut the next 1, 3, 7 … 63
// cuts start their jobs while stopped, doubling while early cuts keep
// being overtaken; one that is not resets it.
func TestEarlyBackoff(t *testing.T) {
	for _, tc := range []struct {
		name string
		// One letter per cut: o tries early and is overtaken, k tries
		// early and keeps its jobs, s is skipped (jobs while stopped).
		cuts string
	}{
		{"never overtaken", "kkkk"},
		{"once", "oskk"},
		{"twice in a row", "osoSSSk"},
		{"three times", "osoSSSoSSSSSSSk"},
		{"reset after a kept one", "oskoskk"},
		{"capped", "os" + "oSSS" + "o" + strings.Repeat("S", 7) + "o" + strings.Repeat("S", 15) + "o" + strings.Repeat("S", 31) + "o" + strings.Repeat("S", 63) + "o" + strings.Repeat("S", 63) + "k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b earlyBackoff
			for i, c := range strings.ToLower(tc.cuts) {
				tried := b.try()
				if want := c != 's'; tried != want {
					t.Fatalf("cut %d (%q): tried early %v, want %v", i, tc.cuts[:i+1], tried, want)
				}
				if tried {
					b.result(c == 'o')
				}
			}
		})
	}
}
