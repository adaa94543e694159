package main

import (
	"os"
	"runtime/pprof"
	"strconv"
	"time"
)

// heapProfileEnv names a file to which the process writes its heap
// profile every heapProfileEvery while it runs, the process id appended
// to the name (go tool pprof reads it): for finding what a long-running
// sender or receiver holds.
const (
	heapProfileEnv   = "DRSYNC_HEAP_PROFILE"
	heapProfileEvery = 10 * time.Second
)

// startHeapProfile starts the writer if the environment asks for one.
func startHeapProfile() {
	path := os.Getenv(heapProfileEnv)
	if path == "" {
		return
	}
	path += "." + strconv.Itoa(os.Getpid())
	go func() {
		for range time.Tick(heapProfileEvery) {
			tmp := path + ".tmp"
			f, err := os.Create(tmp)
			if err != nil {
				continue
			}
			err = pprof.Lookup("heap").WriteTo(f, 0)
			if f.Close() == nil && err == nil {
				os.Rename(tmp, path)
			}
		}
	}()
}
