//go:build !ceph || !cgo

package rbd

// Supported says whether this binary can reach a Ceph cluster.
const Supported = false

// Conn is a connection to a Ceph cluster; in a build without the ceph tag
// none can be made.
type Conn struct{}

// Connect fails: this binary was built without Ceph support.
func Connect(Config) (*Conn, error) { return nil, ErrUnsupported }

// Close does nothing.
func (*Conn) Close() {}

// MonCommand fails: this binary was built without Ceph support.
func (*Conn) MonCommand(string) ([]byte, string, error) { return nil, "", ErrUnsupported }

// OpenPool fails: this binary was built without Ceph support.
func (*Conn) OpenPool(string) (Pool, error) { return nil, ErrUnsupported }
