package serve

import (
	"errors"
	"strings"
	"testing"

	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/receiver"
)

func TestSettingsValidate(t *testing.T) {
	fpA := "sha256:" + strings.Repeat("a", 64)
	valid := func() Settings {
		return Settings{Listen: "127.0.0.1:0", StorageDir: "/r", Access: Access{Senders: []Sender{{Name: "site-a", Fingerprint: fpA, VMs: []string{"web-1"}}}}}
	}
	tests := []struct {
		name     string
		edit     func(s *Settings)
		wantPath string // "" means valid
	}{
		{"valid", func(s *Settings) {}, ""},
		{"no listen", func(s *Settings) { s.Listen = "" }, "listen"},
		{"ack too small", func(s *Settings) { s.AckBytes = 1024 }, "ack_every"},
		{"no storage", func(s *Settings) { s.StorageDir = "" }, "storage.dir"},
		{"keep points", func(s *Settings) { s.KeepPoints = -1 }, "storage.keep_points"},
		{"no senders", func(s *Settings) { s.Access.Senders = nil }, "sender"},
		{"unpinned without CA", func(s *Settings) { s.Access.Senders[0].Fingerprint = "" }, `sender "site-a": fingerprint`},
		{"second writer", func(s *Settings) {
			s.Access.Senders = append(s.Access.Senders, Sender{Name: "site-b", Fingerprint: "sha256:" + strings.Repeat("b", 64), VMs: []string{"web-1"}})
		}, `sender "site-b": vms`},
		{"name twice", func(s *Settings) { s.Access.Senders = append(s.Access.Senders, s.Access.Senders[0]) }, "sender[1].name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := valid()
			tc.edit(&s)
			err := s.Validate()
			if tc.wantPath == "" {
				if err != nil || s.AckBytes != receiver.DefaultAckBytes {
					t.Errorf("error %v, ack bytes %d", err, s.AckBytes)
				}
				return
			}
			if fe, ok := errors.AsType[*field.Error](err); !ok || fe.Path != tc.wantPath {
				t.Errorf("error %v; want path %q", err, tc.wantPath)
			}
		})
	}
}
