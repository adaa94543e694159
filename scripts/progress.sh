#!/usr/bin/env bash
# Reads `go test -v` output on stdin and shows a person watching `make test`
# which long test runs: a line as each test starts and ends, with the time
# since the start. Everything goes to the log file named by $1, whose
# failing tests' output is printed when a test fails.
set -uo pipefail
log=$1
start=$(date +%s)
: >"$log"
while IFS= read -r line; do
	printf '%s\n' "$line" >>"$log"
	case $line in
	"=== RUN "*)
		name=${line#=== RUN }
		# Subtests are part of their test's line.
		[[ $name == */* ]] || printf '  [%4ds] running %s\n' $(($(date +%s) - start)) "$name"
		;;
	"--- FAIL: "* | "    --- FAIL: "*)
		printf '  [%4ds] %s\n' $(($(date +%s) - start)) "${line#"${line%%[! ]*}"}"
		;;
	"--- PASS: "* | "--- SKIP: "*)
		printf '  [%4ds] %s\n' $(($(date +%s) - start)) "$line"
		;;
	"ok "* | "FAIL"* | "panic:"*)
		printf '%s\n' "$line"
		;;
	esac
done
