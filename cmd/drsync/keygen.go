package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/drsync/drsync/tlsid"
)

func keygenCommand() *command {
	var out, name string
	c := &command{
		name:  "keygen",
		short: "generate this site's key pair and print its fingerprint",
		args:  "--name NAME [--out DIR]",
		summary: `Generate this site's key pair: DIR/NAME.crt and DIR/NAME.key (mode 0600).
Existing files are never overwritten. Prints the certificate fingerprint
to paste into the other site's configuration. NAME is the certificate's
common name (the [[sender]] name when the receiver trusts a CA).`,
		flags: func(set *flag.FlagSet) {
			set.StringVar(&out, "out", ".", "directory to write the key pair to (created if missing)")
			set.StringVar(&name, "name", "", "name of this site's identity, e.g. site-a (required)")
		},
	}
	c.run = func(ctx context.Context, e *env, set *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if name == "" {
			return usagef("--name is required")
		}
		if !validIdentityName(name) {
			return usagef("--name %q: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
		}
		if err := os.MkdirAll(out, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", out, err)
		}
		id, err := tlsid.WriteIdentity(out, name)
		if err != nil {
			return err
		}
		crt := filepath.Join(out, name+".crt")
		key := filepath.Join(out, name+".key")
		fmt.Fprintf(e.stdout, `Wrote %s (certificate) and %s (private key, keep it secret).
Fingerprint of %q: %s

On a receiver, admit this sender with:
  [[sender]]
  name = %q
  fingerprint = %q
  vms = ["..."]

On a sender, trust this receiver with:
  [receiver]
  fingerprints = [%q]
`, crt, key, name, id.Fingerprint, name, id.Fingerprint, id.Fingerprint)
		return nil
	}
	return c
}

// validIdentityName keeps names to what is safe as a file name and a
// certificate common name.
func validIdentityName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '.' || s[0] == '-' || s[0] == '_' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
