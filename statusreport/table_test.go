package statusreport

import (
	"bytes"
	"strings"
	"testing"

	"github.com/drsync/drsync/agent"
)

// The sender's status table flags a predicted RPO breach.
func TestStatusTableBreach(t *testing.T) {
	for _, breach := range []bool{false, true} {
		var out bytes.Buffer
		WriteTable(&out, "sender", []Row{{VM: "web-1", Flow: &agent.FlowStatus{RPOTargetSeconds: 30, BreachPredicted: breach}}})
		if got := strings.Contains(out.String(), "30s BREACH"); got != breach {
			t.Errorf("breach predicted %v, table:\n%s", breach, out.String())
		}
	}
}

// The table says why protection of a libvirt domain waits, and nothing
// of a domain that runs.
func TestStatusTableDomain(t *testing.T) {
	tests := []struct {
		name string
		d    *agent.DomainStatus
		want string
	}{
		{"shut off", &agent.DomainStatus{State: "shut-off", Held: true, Detail: "domain shut down at 16:42:03 UTC; waiting for it to start"},
			"web-1: domain shut down at 16:42:03 UTC; waiting for it to start"},
		{"migrating", &agent.DomainStatus{State: "migrating", Held: true, Detail: "domain migrating (outgoing) since 16:42:03 UTC; protection paused"},
			"web-1: domain migrating (outgoing) since 16:42:03 UTC; protection paused"},
		{"running", &agent.DomainStatus{State: "running", Detail: "domain running"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			WriteTable(&out, "sender", []Row{{VM: "web-1", Domain: tc.d}})
			if tc.want == "" {
				if strings.Contains(out.String(), "web-1: ") {
					t.Errorf("a running domain gets a note:\n%s", out.String())
				}
				return
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("table does not say %q:\n%s", tc.want, out.String())
			}
		})
	}
}

// The pause column says how the last cut took the guest's RAM.
func TestStatusTableRAMPath(t *testing.T) {
	for _, path := range []string{"tracked", "full"} {
		var out bytes.Buffer
		WriteTable(&out, "sender", []Row{{VM: "web-1", RAMPath: path, GuestPause: &agent.PauseSummary{LastMS: 3, MedianMS: 4, MaxMS: 9}}})
		if want := "3.0/4.0/9.0 ms (RAM " + path + ")"; !strings.Contains(out.String(), want) {
			t.Errorf("table does not say %q:\n%s", want, out.String())
		}
	}
}
