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
