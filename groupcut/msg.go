package groupcut

import (
	"fmt"
)

// Kind is what a message between a group's leader and a member says.
type Kind uint8

const (
	// Leader to member.
	Prepare Kind = iota + 1 // start converging the capture while the guest runs
	Stop                    // stop the guest now and take the cut while stopped
	Resume                  // every member holds its cut: resume and keep it
	Abort                   // resume if stopped, drop the cut

	// Member to leader; also a member's own steps reporting to it.
	Converged // the capture converged: a stop now costs a small final pass
	Held      // stopped, cut taken: the guest waits for Resume
	Resumed   // running again, cut kept
	Aborted   // running again (or never stopped), cut dropped
	Failed    // the step failed; the member aborts its cut
)

var kindNames = [...]string{"?", "prepare", "stop", "resume", "abort", "converged", "held", "resumed", "aborted", "failed"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// ParseKind is the inverse of Kind.String.
func ParseKind(s string) (Kind, error) {
	for i, n := range kindNames[1:] {
		if n == s {
			return Kind(i + 1), nil
		}
	}
	return 0, fmt.Errorf("groupcut: unknown message kind %q", s)
}

// Msg is one message of a group cut. Member is the VM it concerns: the
// addressee of the leader's messages, the sender of a member's.
type Msg struct {
	Kind   Kind
	Cut    uint64
	Member string
	Reason string // Failed, Aborted: why
}

func (m Msg) String() string {
	s := fmt.Sprintf("%s cut=%d", m.Kind, m.Cut)
	if m.Reason != "" {
		s += fmt.Sprintf(" reason=%q", m.Reason)
	}
	return s
}
