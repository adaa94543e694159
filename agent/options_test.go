package agent

import (
	"testing"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/wire"
)

func TestOptionsValidate(t *testing.T) {
	files := &sender.FileSourceOptions{}
	ok := func() Options {
		return Options{Dialer: sender.DialFunc(nil), VMs: []VM{{Name: "web-1", StateDir: "/s/web-1", Files: files,
			Pacing: Pacing{Mode: Continuous, MinInterval: 10 * time.Second, Compression: wire.CompressFast}}}}
	}
	tests := []struct {
		name string
		edit func(o *Options)
		ok   bool
	}{
		{"valid", func(o *Options) {}, true},
		{"adaptive", func(o *Options) { o.VMs[0].Pacing.RPOTarget, o.VMs[0].Pacing.AutoCompression = time.Minute, true }, true},
		{"no VMs", func(o *Options) { o.VMs = nil }, false},
		{"no dialer", func(o *Options) { o.Dialer = nil }, false},
		{"bad name", func(o *Options) { o.VMs[0].Name = "../x" }, false},
		{"no state dir", func(o *Options) { o.VMs[0].StateDir = "" }, false},
		{"two sources", func(o *Options) { o.VMs[0].Live = &livecut.Options{} }, false},
		{"no source", func(o *Options) { o.VMs[0].Files = nil }, false},
		{"VM twice", func(o *Options) { o.VMs = append(o.VMs, o.VMs[0]) }, false},
		{"final without once", func(o *Options) { o.Final = true }, false},
		{"final of image files", func(o *Options) { o.Final, o.Once = true, true }, false},
		{"no interval", func(o *Options) { o.VMs[0].Pacing.MinInterval = 0 }, false},
		{"schedule missing", func(o *Options) { o.VMs[0].Pacing.Mode = Scheduled }, false},
		{"adaptive schedule", func(o *Options) {
			o.VMs[0].Pacing = Pacing{Mode: Scheduled, Schedule: time.Hour, RPOTarget: time.Hour}
		}, false},
		{"auto compression without target", func(o *Options) { o.VMs[0].Pacing.AutoCompression = true }, false},
		{"unknown mode", func(o *Options) { o.VMs[0].Pacing.Mode = "sometimes" }, false},
	}
	for _, tc := range tests {
		o := ok()
		tc.edit(&o)
		if err := o.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}
