// Package units reads and writes the quantities drsync's settings are
// written in: sizes in binary units ("64KiB"), rates as links are rated
// ("100Mbit/s") and durations ("15m"). It decodes text and knows nothing
// of where the text comes from (files, flags) and of the rules a setting
// must meet, which its library's Validate holds.
package units
