// Package field names the setting a validation error is about, so that a
// front end (the drsync command and its configuration files) can point at
// the key to fix without knowing the rules.
//
// A library's Validate returns an *Error whose Path names the setting the
// way drsync's configuration files do: lower-case keys joined by '.', an
// entry of a list by its index ("vm[0].name") until it has a valid name,
// then by that name ("vm \"web-1\": disk \"vda\".path"). The front end adds
// the file, and maps a path if it names the setting otherwise. The package
// knows nothing of files or formats.
package field
