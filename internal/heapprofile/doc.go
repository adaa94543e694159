// Package heapprofile writes a running process's heap profile, every Every,
// to the file the environment variable Env names (the process id
// appended), for finding what a long-running sender or receiver holds;
// go tool pprof reads it. It knows nothing of drsync's subcommands.
package heapprofile
