// Package runbook runs a site failover: an ordered recovery plan in the
// spirit of vSphere SRM, where VMs come up in priority groups (databases
// before the application servers that need them), hooks fence the failed
// site or switch DNS, and health checks gate each group.
//
// The plan is pure data: Steps turns a Runbook into an ordered list of
// steps with stable identifiers. The run log (one JSON object per line,
// appended and fsynced as each step ends) records what is done, so a
// runbook interrupted halfway continues where it stopped when run again:
// finished hooks and checks are not repeated, and a VM whose QEMU still
// runs is not started twice. A VM whose QEMU is gone boots from the disk
// overlays it wrote at the DR site, which no run deletes: see Decide for
// the rule, and --discard-dr-writes for starting over.
//
//	{"step":"start:db-1","status":"done","at":"...","pid":4242,"qmp":"/.../qmp.sock","epoch":17}
//
// Everything that touches the world (hooks, QEMU, sockets) goes through
// the Env interface; QEMUEnv is the real one. runbook must not know how
// replicas are written nor how its TOML file is parsed (cmd/drsync does).
package runbook
