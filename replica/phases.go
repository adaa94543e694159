package replica

import (
	"log/slog"
	"time"
)

// phases times the steps of a commit for its log line, so that an
// operator can tell a slow disk (sync) from a large epoch (images, refs).
type phases struct {
	start, last time.Time
	steps       []slog.Attr
}

func newPhases() phases {
	now := time.Now()
	return phases{start: now, last: now}
}

// mark ends the step named since the previous mark.
func (p *phases) mark(name string) {
	now := time.Now()
	p.steps = append(p.steps, slog.Duration(name, now.Sub(p.last).Round(time.Microsecond)))
	p.last = now
}

// attrs are the steps and the total, as log attributes.
func (p *phases) attrs() []any {
	out := make([]any, 0, len(p.steps)+1)
	for _, a := range p.steps {
		out = append(out, a)
	}
	return append(out, slog.Duration("took", p.last.Sub(p.start).Round(time.Microsecond)))
}
