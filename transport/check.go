package transport

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Idle timeout bounds. Below the minimum a few lost packets would kill
// healthy connections; above the maximum a dead link goes unnoticed for
// too long.
const (
	MinIdleTimeout = time.Second
	MaxIdleTimeout = 10 * time.Minute
)

// CheckIdleTimeout checks a configured idle timeout; zero means
// DefaultIdleTimeout.
func CheckIdleTimeout(d time.Duration) error {
	if d != 0 && (d < MinIdleTimeout || d > MaxIdleTimeout) {
		return fmt.Errorf("%s is outside %s..%s (default %s)", d, MinIdleTimeout, MaxIdleTimeout, DefaultIdleTimeout)
	}
	return nil
}

// CheckAddress checks an address of the form host:port. allowZero admits
// port 0 (listen on any free port).
func CheckAddress(addr string, allowZero bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want host:port, e.g. \"192.0.2.10:7447\" or \"[2001:db8::1]:7447\"", addr)
	}
	if strings.ContainsAny(host, " \t") {
		return fmt.Errorf("address %q: host contains spaces", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !allowZero) {
		return fmt.Errorf("address %q: port %q is not a valid port number (1-65535)", addr, port)
	}
	return nil
}
