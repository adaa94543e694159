package datadriven

import (
	"strings"
	"testing"
	"time"
)

func TestArgs(t *testing.T) {
	a := ParseArgs(strings.Fields("for=1.5s n=7 rate=2.5 name=x all empty="))
	if a.Dur("for") != 1500*time.Millisecond || a.Uint("n") != 7 || a.Float("rate") != 2.5 || a.Str("name") != "x" {
		t.Fatalf("values: %v %v %v %q", a.Dur("for"), a.Uint("n"), a.Float("rate"), a.Str("name"))
	}
	if !a.Has("all") || !a.Has("empty") || a.Has("none") || a.Uint("none") != 0 || a.Dur("empty") != 0 {
		t.Fatal("flags and absent keys")
	}
	if err := a.Err(); err != nil {
		t.Fatalf("no value failed to parse, yet: %v", err)
	}
	a.Dur("name")
	a.Uint("rate")
	err := a.Err()
	if err == nil || !strings.Contains(err.Error(), "name=x") || !strings.Contains(err.Error(), "rate=2.5") {
		t.Fatalf("errors of two bad values: %v", err)
	}
}
