package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// The DR site's state that is not an event of replication, read at
// scrape time: the replicas' storage and the outcome of failover drills.

// storage reports the size and free space of the file system holding the
// replicas, read at scrape time.
type storage struct {
	dir         string
	avail, size *prometheus.Desc
}

func (s *storage) Describe(ch chan<- *prometheus.Desc) { ch <- s.avail; ch <- s.size }

func (s *storage) Collect(ch chan<- prometheus.Metric) {
	var st unix.Statfs_t
	if err := unix.Statfs(s.dir, &st); err != nil {
		// No value rather than a wrong one; an invalid metric would fail
		// the whole scrape.
		return
	}
	bs := float64(st.Bsize)
	ch <- prometheus.MustNewConstMetric(s.avail, prometheus.GaugeValue, float64(st.Bavail)*bs)
	ch <- prometheus.MustNewConstMetric(s.size, prometheus.GaugeValue, float64(st.Blocks)*bs)
}

// Storage exports the size and the space available (to unprivileged
// users, as df shows it) of the file system holding dir.
func (r *Receiver) Storage(dir string) {
	r.reg.MustRegister(&storage{
		dir:   dir,
		avail: prometheus.NewDesc("drsync_receiver_storage_available_bytes", "Space available on the file system holding the replicas.", nil, nil),
		size:  prometheus.NewDesc("drsync_receiver_storage_size_bytes", "Size of the file system holding the replicas.", nil, nil),
	})
}

// Drill is the outcome of the last failover drill of a VM.
type Drill struct {
	At          time.Time // when the last drill ended
	OK          bool
	LastSuccess time.Time // zero: no drill of this VM ever passed
}

// drills reports drill outcomes, read at scrape time from source.
type drills struct {
	source                   func() map[string]Drill
	result, success, lastRun *prometheus.Desc
}

func (d *drills) Describe(ch chan<- *prometheus.Desc) {
	ch <- d.result
	ch <- d.success
	ch <- d.lastRun
}

func (d *drills) Collect(ch chan<- prometheus.Metric) {
	for vm, r := range d.source() {
		ok := 0.0
		if r.OK {
			ok = 1
		}
		ch <- prometheus.MustNewConstMetric(d.result, prometheus.GaugeValue, ok, vm)
		ch <- prometheus.MustNewConstMetric(d.lastRun, prometheus.GaugeValue, unixSeconds(r.At), vm)
		if !r.LastSuccess.IsZero() {
			ch <- prometheus.MustNewConstMetric(d.success, prometheus.GaugeValue, unixSeconds(r.LastSuccess), vm)
		}
	}
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// Drills exports the outcome of each VM's last failover drill, which
// source returns at every scrape.
func (r *Receiver) Drills(source func() map[string]Drill) {
	r.reg.MustRegister(&drills{
		source:  source,
		result:  prometheus.NewDesc("drsync_drill_last_result", "Outcome of the VM's last failover drill: 1 passed, 0 failed.", []string{"vm"}, nil),
		success: prometheus.NewDesc("drsync_drill_last_success_timestamp_seconds", "When the VM's last passed failover drill ended.", []string{"vm"}, nil),
		lastRun: prometheus.NewDesc("drsync_drill_last_run_timestamp_seconds", "When the VM's last failover drill ended, passed or not.", []string{"vm"}, nil),
	})
}
