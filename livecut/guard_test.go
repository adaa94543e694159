package livecut

import "testing"

func TestGuardDecide(t *testing.T) {
	tests := []struct {
		name string
		f    guardFacts
		want guardAction
	}{
		{"sender killed after the cut's migration completed", guardFacts{CutInFlight: true, Status: "postmigrate", Migration: "completed"}, guardResume},
		{"live sender in the middle of its cut", guardFacts{SenderAlive: true, CutInFlight: true, Status: "postmigrate", Migration: "completed"}, guardNone},
		{"live sender, guest paused by the operator", guardFacts{SenderAlive: true, Status: "paused"}, guardNone},
		{"no cut in flight: the operator's completed migration", guardFacts{Status: "postmigrate", Migration: "completed"}, guardNone},
		{"no cut in flight: the operator paused the guest", guardFacts{Status: "paused", Migration: "completed"}, guardNone},
		{"sender killed during a cut that stopped the guest itself, migration failed", guardFacts{CutInFlight: true, Stopped: true, Status: "paused", Migration: "failed"}, guardResume},
		{"sender killed after a cut's own stop, before its migration", guardFacts{CutInFlight: true, Stopped: true, Status: "paused"}, guardResume},
		{"sender killed during a cut that stopped the guest itself, migration still ending", guardFacts{CutInFlight: true, Stopped: true, Status: "paused", Migration: "active"}, guardWait},
		{"a cut in flight that did not stop the guest: a pause is the operator's", guardFacts{CutInFlight: true, Status: "paused", Migration: "failed"}, guardNone},
		{"no cut in flight: the operator's migration runs", guardFacts{Status: "running", Migration: "active"}, guardNone},
		{"killed before migrate: guest runs", guardFacts{CutInFlight: true, Status: "running", Migration: "completed"}, guardNone},
		{"killed during the cut's migration: it fails by itself", guardFacts{CutInFlight: true, Status: "running", Migration: "active"}, guardWait},
		{"killed during completion: QEMU is finishing", guardFacts{CutInFlight: true, Status: "finish-migrate", Migration: "device"}, guardWait},
		{"migration being cancelled", guardFacts{CutInFlight: true, Status: "running", Migration: "cancelling"}, guardWait},
		{"the cut's migration failed and QEMU resumed the guest", guardFacts{CutInFlight: true, Status: "running", Migration: "failed"}, guardNone},
		{"operator paused the guest during the cut, migration failed", guardFacts{CutInFlight: true, Status: "postmigrate", Migration: "failed"}, guardNone},
		{"operator paused the guest during the cut", guardFacts{CutInFlight: true, Status: "paused", Migration: "active"}, guardWait},
		{"operator paused the guest, the cut's migration over", guardFacts{CutInFlight: true, Status: "paused", Migration: "cancelled"}, guardNone},
		{"switch-back: a final cut keeps the guest paused", guardFacts{CutInFlight: true, Final: true, Status: "postmigrate", Migration: "completed"}, guardNone},
		{"guest shut down", guardFacts{CutInFlight: true, Status: "shutdown", Migration: "completed"}, guardNone},
		{"guest panicked", guardFacts{CutInFlight: true, Status: "guest-panicked", Migration: "completed"}, guardNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := guardDecide(tt.f)
			if got != tt.want {
				t.Errorf("guardDecide(%+v) = %v (%s), want %v", tt.f, got, why, tt.want)
			}
			if why == "" {
				t.Error("no reason given")
			}
		})
	}
}
