package field

import (
	"errors"
	"testing"
)

func TestUnder(t *testing.T) {
	base := errors.New("bad")
	for _, tc := range []struct {
		name     string
		err      error
		wantPath string
	}{
		{"nested setting", Wrap("path", base), `disk "vda".path`},
		{"the entry itself", base, `disk "vda"`},
		{"no path", &Error{Err: base}, `disk "vda"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Under(`disk "vda"`, ".", tc.err)
			fe, ok := errors.AsType[*Error](got)
			if !ok || fe.Path != tc.wantPath || !errors.Is(got, base) {
				t.Errorf("Under = %#v, want path %q wrapping %v", got, tc.wantPath, base)
			}
		})
	}
	if Under("x", ".", nil) != nil || Wrap("x", nil) != nil {
		t.Error("a nil error must stay nil")
	}
}
