// Package secret holds configuration values that must never be printed:
// passwords, client secrets, private keys. A Secret names where its value
// lives (inline, an environment variable or a file) and prints as
// "[redacted]" through every formatting path, so a config struct can be
// logged or dumped without leaking what it guards.
package secret

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

const redacted = "[redacted]"

// Secret is a configured secret value. In YAML it is a plain string (the
// value itself), {env: NAME} or {file: /path}. File secrets are read again
// on every use, so a rotated file (a remounted Kubernetes Secret) takes
// effect at the next login without a restart.
type Secret struct {
	literal *string
	env     string
	file    string
	set     bool
}

// Literal returns a Secret holding value itself, for code that builds a
// configuration (the demo, tests).
func Literal(value string) Secret { return Secret{literal: &value, set: true} }

// IsZero reports whether the secret was not configured at all.
func (s Secret) IsZero() bool { return !s.set }

// Value resolves the secret. It fails with a message that names the source
// (never the value) when the variable is unset or the file unreadable.
func (s Secret) Value() (string, error) {
	switch {
	case !s.set:
		return "", errors.New("not set")
	case s.env != "":
		v, ok := os.LookupEnv(s.env)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", s.env)
		}
		if v == "" {
			return "", fmt.Errorf("environment variable %s is empty", s.env)
		}
		return v, nil
	case s.file != "":
		b, err := os.ReadFile(s.file)
		if err != nil {
			return "", fmt.Errorf("cannot read secret file %s: %w", s.file, errors.Unwrap(err))
		}
		// A trailing newline is an artefact of how the file was written,
		// never part of a password.
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return "", fmt.Errorf("secret file %s is empty", s.file)
		}
		return v, nil
	default:
		if s.literal == nil || *s.literal == "" {
			return "", errors.New("is empty")
		}
		return *s.literal, nil
	}
}

// UnmarshalYAML accepts a string, {env: NAME} or {file: PATH}.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag != "!!str" {
			return errors.New("must be a string, {env: NAME} or {file: PATH}")
		}
		*s = Literal(n.Value)
		return nil
	case yaml.MappingNode:
		var src struct {
			Env  string `yaml:"env"`
			File string `yaml:"file"`
		}
		if len(n.Content) != 2 {
			return errors.New("must have exactly one key, env or file")
		}
		if err := n.Decode(&src); err != nil {
			return errors.New("must be a string, {env: NAME} or {file: PATH}")
		}
		switch key := n.Content[0].Value; {
		case key == "env" && src.Env != "":
			*s = Secret{env: src.Env, set: true}
		case key == "file" && src.File != "":
			*s = Secret{file: src.File, set: true}
		default:
			return fmt.Errorf("unknown or empty key %q: want env or file", key)
		}
		return nil
	default:
		return errors.New("must be a string, {env: NAME} or {file: PATH}")
	}
}

// String returns "[redacted]".
func (s Secret) String() string { return redacted }

// GoString returns "[redacted]", so %#v does not leak either.
func (s Secret) GoString() string { return redacted }

// Format prints "[redacted]" for every verb.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue keeps the value out of slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalYAML keeps the value out of a dumped config.
func (s Secret) MarshalYAML() (any, error) { return redacted, nil }

// MarshalJSON keeps the value out of JSON output.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
