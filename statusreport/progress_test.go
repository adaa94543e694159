package statusreport

import (
	"testing"
	"time"

	"github.com/drsync/drsync/sender"
)

func TestProgressSegment(t *testing.T) {
	start := time.Unix(100, 0)
	for _, tc := range []struct {
		p    sender.Progress
		want string
	}{
		{sender.Progress{SentBytes: 1e6, AllBytes: 4e6}, "web-1 [======                  ]  25% 1.0/4.0 MB 0.5 MB/s"},
		{sender.Progress{SentBytes: 1e6, AllBytes: 2e6, Planning: true}, "web-1 [============            ]  50% 1.0/2.0+ MB 0.5 MB/s"},
		{sender.Progress{SentBytes: 5e6, AllBytes: 4e6}, "web-1 [========================] 100% 5.0/4.0 MB 2.5 MB/s"},
	} {
		if got := ProgressSegment("web-1", tc.p, start, start.Add(2*time.Second), true); got != tc.want {
			t.Errorf("%+v:\n got %q\nwant %q", tc.p, got, tc.want)
		}
	}
}
