package agent

import "testing"

// A sender sets its collector goal unless the operator's GOGC says
// otherwise, whatever its value (GOGC=off included).
func TestCollectorGoal(t *testing.T) {
	for _, tc := range []struct {
		env     map[string]string
		pct     int
		applied bool
	}{
		{env: nil, pct: GCPercent, applied: true},
		{env: map[string]string{"GOGC": "100"}},
		{env: map[string]string{"GOGC": "off"}},
		{env: map[string]string{"GOGC": ""}},
		{env: map[string]string{"GOMEMLIMIT": "1GiB"}, pct: GCPercent, applied: true},
	} {
		pct, applied := CollectorGoal(func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok })
		if pct != tc.pct || applied != tc.applied {
			t.Errorf("environment %v: CollectorGoal = %d, %v; want %d, %v", tc.env, pct, applied, tc.pct, tc.applied)
		}
	}
	if GCPercent <= 0 || GCPercent >= 100 {
		t.Fatalf("GCPercent %d: the point is a goal below Go's default of 100", GCPercent)
	}
}
