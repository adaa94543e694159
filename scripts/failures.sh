#!/usr/bin/env bash
# Prints, for each test that failed in the `go test -v` log $1, the last
# messages it logged (file.go:line: lines) before its "--- FAIL" line,
# among which are its errors, each cut to 300 characters: a short summary
# for the end of `make test`, whose long output may be seen only in part.
set -uo pipefail
awk '
	/^=== RUN / { if ($3 !~ /\//) n = 0; next }
	/^--- FAIL: / {
		print "  " $0
		for (i = (n > 15 ? n - 15 : 0); i < n; i++) print "    " substr(buf[i % 15], 1, 300)
		n = 0
		next
	}
	/^--- (PASS|SKIP): / { n = 0; next }
	/^ +[A-Za-z0-9_]+\.go:[0-9]+: / { sub(/^ +/, ""); buf[n % 15] = $0; n++ }
' "$1"
