package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/internal/units"
	"github.com/drsync/drsync/tlsid"
)

// The quantities settings are written in (package units), by their
// names here.
type (
	Size     = units.Size
	Rate     = units.Rate
	Duration = units.Duration
)

// IdentityConfig is the [identity] table: this side's key pair, as written
// by drsync keygen.
type IdentityConfig struct {
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
}

func (c *IdentityConfig) validate(file string) error {
	if c.Cert == "" {
		return &configError{file, "identity.cert", errors.New("missing: the certificate file written by \"drsync keygen\"")}
	}
	if c.Key == "" {
		return &configError{file, "identity.key", errors.New("missing: the private key file written by \"drsync keygen\"")}
	}
	return nil
}

func (c *IdentityConfig) resolve(dir string) {
	c.Cert = resolvePath(dir, c.Cert)
	c.Key = resolvePath(dir, c.Key)
}

// load reads the key pair.
func (c *IdentityConfig) load(file string) (tlsid.Identity, error) {
	// Checked one by one so that the message names the key to fix.
	for _, f := range []struct{ key, path string }{{"identity.cert", c.Cert}, {"identity.key", c.Key}} {
		if _, err := os.Stat(f.path); err != nil {
			return tlsid.Identity{}, &configError{file, f.key, fmt.Errorf("%w (create the pair with drsync keygen)", err)}
		}
	}
	id, err := tlsid.LoadIdentity(c.Cert, c.Key)
	if err != nil {
		return tlsid.Identity{}, &configError{file, "identity", err}
	}
	return id, nil
}

// decodeStrict decodes the TOML file at path into v and refuses unknown
// keys, which are nearly always typos of a setting that would otherwise be
// silently ignored. It returns the file's directory, against which relative
// paths in it are resolved.
func decodeStrict(path string, v any) (dir string, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", &configError{path, "", err}
	}
	b, err := os.ReadFile(abs)
	if err != nil {
		return "", &configError{path, "", fmt.Errorf("cannot read: %w", err)}
	}
	md, err := toml.NewDecoder(bytes.NewReader(b)).Decode(v)
	if err != nil {
		return "", &configError{path, "", err}
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		msg := "unknown key; check its spelling and section (testdata/configs has every key, explained)"
		if len(keys) > 1 {
			msg += "; other unknown keys: " + strings.Join(keys[1:], ", ")
		}
		return "", &configError{path, keys[0], errors.New(msg)}
	}
	return filepath.Dir(abs), nil
}

// resolvePath makes p absolute relative to dir, the config file's directory,
// so that a config means the same whatever the working directory.
func resolvePath(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// configErr names, in file, the key a library's *field.Error points at
// (the libraries name settings as these files do).
func configErr(file string, err error) error {
	if err == nil {
		return nil
	}
	if fe, ok := errors.AsType[*field.Error](err); ok {
		return &configError{file, fe.Path, fe.Err}
	}
	return &configError{file, "", err}
}
