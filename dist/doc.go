// Package dist holds what an operator installs next to the drsync binary:
// systemd units and timers (systemd/), Prometheus alerting rules
// (prometheus/) and a Grafana dashboard (grafana/). It has no code; its
// tests check those files: the units with systemd-analyze verify and the
// binary's own flag parsing, the rules with promtool, and that the
// dashboard and the rules use only metric names drsync exports.
package dist
