package testkit

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Ceph is a single-node Ceph cluster started by scripts/ceph-cluster.sh.
type Ceph struct {
	Dir          string // where its data, logs and keyrings live
	Conf         string // its ceph.conf
	Client       string // the receiver's cephx user, without "client."
	Pool         string // an RBD pool the user may use
	AdminKeyring string
	Started      time.Duration // how long it took to start
}

var (
	cephOnce sync.Once
	ceph     *Ceph
	cephErr  error
)

func cephScript() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "scripts", "ceph-cluster.sh")
}

// CephCluster returns the test binary's Ceph cluster, starting it on first
// use (about 15 s); the package's TestMain must call Main, which stops it
// and removes its data when the tests end (or the script does, if the test
// binary is killed first). DRSYNC_CEPH_DIR names a running
// cluster to use instead, which is then left running.
func CephCluster(t testing.TB) *Ceph {
	t.Helper()
	cephOnce.Do(func() {
		if d := os.Getenv("DRSYNC_CEPH_DIR"); d != "" {
			ceph, cephErr = cephEnv(d, 0)
			return
		}
		if !mainRuns {
			cephErr = fmt.Errorf("testkit.CephCluster: the package's TestMain must call testkit.Main")
			return
		}
		dir, err := os.MkdirTemp("", "drsync-ceph-")
		if err != nil {
			cephErr = err
			return
		}
		t0 := time.Now()
		out, err := exec.Command(cephScript(), "start", dir, strconv.Itoa(os.Getpid())).CombinedOutput()
		if err != nil {
			os.RemoveAll(dir)
			cephErr = fmt.Errorf("start a Ceph cluster: %v\n%s", err, out)
			return
		}
		stopCeph = func() { exec.Command(cephScript(), "stop", dir).Run() }
		ceph, cephErr = cephEnv(dir, time.Since(t0))
	})
	if cephErr != nil {
		t.Fatal(cephErr)
	}
	return ceph
}

// stopCeph stops the cluster CephCluster started; Main calls it.
var stopCeph = func() {}

func cephEnv(dir string, took time.Duration) (*Ceph, error) {
	out, err := exec.Command(cephScript(), "env", dir).Output()
	if err != nil {
		return nil, fmt.Errorf("ceph-cluster.sh env %s: %w", dir, err)
	}
	c := &Ceph{Dir: dir, Started: took}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "CEPH_CONF":
			c.Conf = v
		case "CEPH_CLIENT":
			c.Client = v
		case "CEPH_POOL":
			c.Pool = v
		case "CEPH_ADMIN_KEYRING":
			c.AdminKeyring = v
		}
	}
	if c.Conf == "" || c.Client == "" || c.Pool == "" {
		return nil, fmt.Errorf("ceph-cluster.sh env %s: incomplete: %q", dir, out)
	}
	return c, nil
}

// Admin runs the ceph command as client.admin and returns its output.
func (c *Ceph) Admin(t testing.TB, args ...string) string {
	t.Helper()
	args = append([]string{"-c", c.Conf, "-n", "client.admin", "-k", c.AdminKeyring}, args...)
	out, err := exec.Command("ceph", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ceph %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
