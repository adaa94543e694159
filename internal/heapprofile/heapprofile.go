package heapprofile

import (
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"time"
)

const (
	// Env names the profile's path; unset, nothing is written.
	Env = "DRSYNC_HEAP_PROFILE"
	// Every is how often the profile is written again.
	Every = 10 * time.Second
)

// FromEnv starts the writer if the environment asks for one.
func FromEnv() {
	path := os.Getenv(Env)
	if path == "" {
		return
	}
	path += "." + strconv.Itoa(os.Getpid())
	go func() {
		for range time.Tick(Every) {
			Write(path) // a failed write is tried again at the next tick
		}
	}()
}

// Write replaces the file at path with the heap profile, whole: a reader
// never sees half of one.
func Write(path string) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	err = pprof.Lookup("heap").WriteTo(f, 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("heap profile: %w", err)
	}
	return nil
}
