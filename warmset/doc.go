// Package warmset learns which guest RAM pages are hot — written in recent
// epochs, or often — and keeps them resident on the DR site, so that
// neither a takeover nor the guest's first seconds after it wait on cold
// storage (VMresume's observation: a resumed VM touches a small, stable
// working set first).
//
// Tracker is pure: per page it keeps a one-byte score that every epoch
// halves and that a write in the epoch raises by Boost. Pages scoring at
// least Threshold are hot; with the defaults a page stays hot for four
// epochs after one write, and longer if written often. The hot set is
// capped at MaxBytes, hottest pages first.
//
//	score' = score - score>>1 + (written ? Boost : 0)     (saturating at 255)
//
// Memory: one byte per 4 KiB page, 256 KiB per GiB of guest RAM.
//
// Pin (pin.go) is the IO edge: it maps a replica's RAM image and mlocks the
// hot ranges, so the kernel cannot evict them from the page cache; the
// takeover maps the same file, and finds them resident.
//
// warmset must not know the wire protocol or the replica's layout: it is
// told page ranges and file paths.
package warmset
