// Package statusreport builds and renders what "drsync status", "drsync
// verify" and the status page beside the metrics show: per VM the committed
// epoch, RPO lag, bytes, last error, guest pauses, last drill and
// consistency group (groups.go), and a replica's verify report.
//
// It owns the report rows (their JSON form is part of the command's
// output), the tables and notes printed for people, and the conversion of
// rows to status pages. It reads the sender's per-VM status files (package
// agent), the receiver's STATUS.json (receiver/serve) and the drill results
// (runbook), and reaches replicas only through replica.Store: it must not
// know a replica's layout, nor anything of TOML, flags or exit codes, which
// are the command's.
package statusreport
