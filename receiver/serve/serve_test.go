package serve

import (
	"crypto/tls"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/drsync/drsync/receiver"
)

// A second server on the same storage directory is refused, naming the
// holder, until the first one closes.
func TestStorageLock(t *testing.T) {
	dir := t.TempDir()
	o := Options{Listen: "127.0.0.1:0", TLS: &tls.Config{}, StorageDir: dir,
		Authorize: func(receiver.Peer, string) error { return nil }}
	first, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(o)
	if !errors.Is(err, ErrLockBusy) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second server: %v; want %v naming this process", err, ErrLockBusy)
	}
	first.Close()
	second, err := Open(o)
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	second.Close()
}

func TestOptionsValidate(t *testing.T) {
	ok := Options{Listen: "127.0.0.1:0", TLS: nil, StorageDir: "/x", Authorize: func(receiver.Peer, string) error { return nil }}
	for _, tc := range []struct {
		name string
		edit func(o *Options)
	}{
		{"no listen address", func(o *Options) { o.Listen = "" }},
		{"no TLS", func(o *Options) {}},
		{"no storage", func(o *Options) { o.StorageDir = "" }},
		{"no authorization", func(o *Options) { o.Authorize = nil }},
	} {
		o := ok
		tc.edit(&o)
		if err := o.Validate(); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}
