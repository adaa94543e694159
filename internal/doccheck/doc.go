// Package doccheck holds the checks that the repository's documents name
// what exists. ARCHITECTURE.md's Guarantees table names, for each promise,
// the tests behind it; a renamed or deleted test would leave a promise
// shown by nothing, so TestGuaranteesNameExistingTests looks every named
// test, benchmark and fuzz target up in its package's source.
//
// It reads the documents and the Go source as text; it must not import
// the packages it checks.
package doccheck
