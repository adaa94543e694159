//go:build !(linux && amd64)

package dirtylog

import (
	"fmt"
	"os"
	"runtime"
)

func injectRegister(pid int, regions []Region) (*os.File, error) {
	return nil, fmt.Errorf("syscall injection on %s/%s: %w", runtime.GOOS, runtime.GOARCH, ErrUnsupported)
}

func injectUffd(pid int, regions []Region, spec uffdSpec) (*os.File, error) {
	return injectRegister(pid, regions)
}
