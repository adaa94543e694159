package datadriven

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Args are a command's arguments, "k=v" or a bare "flag". The typed
// getters read an absent key as the zero value and collect what does not
// parse, for Err to report once the command's arguments are read.
type Args struct {
	m    map[string]string
	errs []error
}

// ParseArgs splits fields (a command line's words after the command).
func ParseArgs(fields []string) *Args {
	a := &Args{m: map[string]string{}}
	for _, f := range fields {
		k, v, _ := strings.Cut(f, "=")
		a.m[k] = v
	}
	return a
}

// Has says whether k was given, with a value or as a flag.
func (a *Args) Has(k string) bool { _, ok := a.m[k]; return ok }

// Str is k's value as written.
func (a *Args) Str(k string) string { return a.m[k] }

// Keys are the keys given, in no order.
func (a *Args) Keys() []string {
	ks := make([]string, 0, len(a.m))
	for k := range a.m {
		ks = append(ks, k)
	}
	return ks
}

// Dur is k as a time.ParseDuration duration.
func (a *Args) Dur(k string) time.Duration {
	return get(a, k, time.ParseDuration)
}

// Float is k as a float64.
func (a *Args) Float(k string) float64 {
	return get(a, k, func(s string) (float64, error) { return strconv.ParseFloat(s, 64) })
}

// Uint is k as a decimal uint64.
func (a *Args) Uint(k string) uint64 {
	return get(a, k, func(s string) (uint64, error) { return strconv.ParseUint(s, 10, 64) })
}

// Parse is k through parse, for a value of the test's own kind.
func Parse[T any](a *Args, k string, parse func(string) (T, error)) T { return get(a, k, parse) }

// Fail records a problem of the test's own finding with the arguments.
func (a *Args) Fail(err error) { a.errs = append(a.errs, err) }

// Err is every value that did not parse, nil if none.
func (a *Args) Err() error { return errors.Join(a.errs...) }

func get[T any](a *Args, k string, parse func(string) (T, error)) T {
	var zero T
	s, ok := a.m[k]
	if !ok || s == "" {
		return zero
	}
	v, err := parse(s)
	if err != nil {
		a.errs = append(a.errs, fmt.Errorf("%s=%s: %w", k, s, err))
		return zero
	}
	return v
}
