// Package metrics exports drsync's state to Prometheus: per VM, the RPO lag
// (now minus the cut of the newest committed epoch, computed at scrape
// time), the epoch length, bytes by kind, RAM pages by how they travelled,
// the guest pause per epoch, goodput, failures, and on the DR site the
// hot-set size, the replicas' storage and the outcome of failover drills.
//
// It owns metric names and the HTTP endpoint, which also serves a status
// page for people at / when given one (package statuspage); it must not
// know how epochs are made. Callers report events (Sender.Committed, Receiver.Committed);
// the clock is passed in, for tests.
//
// Names (all prefixed drsync_):
//
//	sender_rpo_lag_seconds{vm}            gauge, at scrape
//	sender_epoch_interval_seconds{vm}     gauge: cut to cut of the last two epochs
//	sender_epochs_total{vm}               counter
//	sender_failures_total{vm}             counter
//	sender_bytes_total{vm,kind}           counter, kind = changed|wire|resent
//	sender_ram_pages_total{vm,how}        counter, how = data|reference|duplicate|zero
//	sender_guest_pause_seconds{vm}        histogram
//	sender_goodput_bytes_per_second{vm}   gauge: wire bytes / epoch duration
//	sender_dirty_bytes_per_second{vm}     gauge: changed bytes / guest time covered
//	sender_plan{vm,value}                 gauge: the adaptive plan (rpo_target_seconds, ...)
//	receiver_rpo_lag_seconds{vm}          gauge, at scrape
//	receiver_epochs_total{vm}             counter
//	receiver_bytes_total{vm,kind}         counter, kind = wire|raw
//	receiver_hot_set_bytes{vm}            gauge
//	receiver_storage_available_bytes      gauge, statfs at scrape
//	receiver_storage_size_bytes           gauge, statfs at scrape
//	drill_last_result{vm}                 gauge, 1 passed, 0 failed; at scrape
//	drill_last_run_timestamp_seconds{vm}  gauge, at scrape
//	drill_last_success_timestamp_seconds{vm} gauge, at scrape
package metrics
