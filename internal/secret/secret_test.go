package secret_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/tokenvend/tokenvend/internal/secret"
)

// canary is the secret value every leak test looks for.
const canary = "s3cr3t-canary-Zq9"

// parse decodes a Secret from the YAML document `password: <doc>`, as a
// kind's config struct would.
func parse(t *testing.T, doc string) (secret.Secret, error) {
	t.Helper()
	var v struct {
		Password secret.Secret `yaml:"password"`
	}
	err := yaml.Unmarshal([]byte("password: "+doc+"\n"), &v)
	return v.Password, err
}

func mustParse(t *testing.T, doc string) secret.Secret {
	t.Helper()
	s, err := parse(t, doc)
	if err != nil {
		t.Fatalf("parse %q: got error %v, want nil", doc, err)
	}
	return s
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLiteral(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		s    secret.Secret
		want string
	}{
		{"Literal", secret.Literal(canary), canary},
		{"yaml plain", mustParse(t, canary), canary},
		{"yaml quoted number", mustParse(t, `"123456"`), "123456"},
		{"yaml block scalar", mustParse(t, "|\n  line1\n  line2"), "line1\nline2\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.s.IsZero() {
				t.Fatal("IsZero: got true, want false")
			}
			got, err := tc.s.Value()
			if err != nil {
				t.Fatalf("Value: got error %v, want nil", err)
			}
			if got != tc.want {
				t.Errorf("Value: got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestZeroAndEmpty(t *testing.T) {
	t.Parallel()
	var zero secret.Secret
	if !zero.IsZero() {
		t.Error("zero Secret: IsZero got false, want true")
	}
	if _, err := zero.Value(); err == nil || !strings.Contains(err.Error(), "not set") {
		t.Errorf("zero Secret: Value error got %v, want one saying not set", err)
	}
	for _, doc := range []string{"", "~", "null"} {
		// yaml.v3 does not call UnmarshalYAML for a null: the secret stays
		// unset and the kind's validation says so.
		if s := mustParse(t, doc); !s.IsZero() {
			t.Errorf("password: %q: IsZero got false, want true", doc)
		}
	}
	empty := mustParse(t, `""`)
	if empty.IsZero() {
		t.Error(`password: "": IsZero got true, want false (it was configured, as empty)`)
	}
	if v, err := empty.Value(); err == nil {
		t.Errorf(`password: "": Value got %q, nil; want an error`, v)
	}
}

func TestEnv(t *testing.T) {
	// t.Setenv: not parallel.
	const name = "TOKENVEND_SECRET_TEST_PASSWORD"
	s := mustParse(t, "{env: "+name+"}")
	if s.IsZero() {
		t.Fatal("IsZero: got true, want false")
	}

	t.Run("set", func(t *testing.T) {
		t.Setenv(name, canary)
		got, err := s.Value()
		if err != nil || got != canary {
			t.Fatalf("Value: got %q, %v; want %q, nil", got, err, canary)
		}
		// The variable is read at each use, not once at load.
		t.Setenv(name, canary+"-rotated")
		if got, _ := s.Value(); got != canary+"-rotated" {
			t.Errorf("Value after change: got %q, want %q", got, canary+"-rotated")
		}
	})
	t.Run("unset", func(t *testing.T) {
		t.Setenv(name, "x") // restored at cleanup
		if err := os.Unsetenv(name); err != nil {
			t.Fatal(err)
		}
		_, err := s.Value()
		if err == nil {
			t.Fatal("Value: got nil error, want one")
		}
		if !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "not set") {
			t.Errorf("Value error: got %q, want it to name %s and say it is not set", err, name)
		}
	})
	t.Run("empty", func(t *testing.T) {
		t.Setenv(name, "")
		v, err := s.Value()
		if err == nil {
			t.Fatalf("Value: got %q, nil; want an error", v)
		}
		if !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "empty") {
			t.Errorf("Value error: got %q, want it to name %s and say it is empty", err, name)
		}
	})
}

func TestFile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, content, want string
	}{
		{"no newline", canary, canary},
		{"trailing LF", canary + "\n", canary},
		{"trailing CRLF", canary + "\r\n", canary},
		{"several trailing newlines", canary + "\n\n", canary},
		{"spaces kept", " " + canary + " \n", " " + canary + " "},
		{"multi-line key keeps inner newlines", "line1\nline2\n", "line1\nline2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "password")
			writeFile(t, path, tc.content)
			s := mustParse(t, "{file: "+path+"}")
			got, err := s.Value()
			if err != nil || got != tc.want {
				t.Errorf("Value: got %q, %v; want %q, nil", got, err, tc.want)
			}
		})
	}
}

func TestFileRotation(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "password")
	writeFile(t, path, "old\n")
	s := mustParse(t, "{file: "+path+"}")
	if got, err := s.Value(); err != nil || got != "old" {
		t.Fatalf("first Value: got %q, %v; want %q, nil", got, err, "old")
	}
	writeFile(t, path, "new\n")
	if got, err := s.Value(); err != nil || got != "new" {
		t.Errorf("Value after rotation: got %q, %v; want %q, nil", got, err, "new")
	}
	// A Kubernetes Secret remount swaps a symlink: follow it too.
	other := filepath.Join(t.TempDir(), "password")
	writeFile(t, other, "newer\n")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, path); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Value(); err != nil || got != "newer" {
		t.Errorf("Value after symlink swap: got %q, %v; want %q, nil", got, err, "newer")
	}
}

func TestFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	writeFile(t, empty, "")
	newline := filepath.Join(dir, "newline")
	writeFile(t, newline, "\n")
	for _, tc := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "missing"), "no such file"},
		{"directory", dir, ""},
		{"empty", empty, "empty"},
		{"only a newline", newline, "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := mustParse(t, "{file: "+tc.path+"}")
			v, err := s.Value()
			if err == nil {
				t.Fatalf("Value: got %q, nil; want an error", v)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.path) {
				t.Errorf("Value error: got %q, want it to name the file %s", msg, tc.path)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("Value error: got %q, want it to contain %q", msg, tc.want)
			}
		})
	}
}

func TestBadShapes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, doc string }{
		{"env and file", "{env: X, file: /tmp/y}"},
		{"unknown key", "{foo: " + canary + "}"},
		{"empty mapping", "{}"},
		{"empty env", `{env: ""}`},
		{"empty file", `{file: ""}`},
		{"env is a list", "{env: [" + canary + "]}"},
		{"env is a mapping", "{env: {a: " + canary + "}}"},
		{"list", "[" + canary + "]"},
		{"number", "12345678"},
		{"float", "1.5"},
		{"bool", "true"},
		{"tagged binary", "!!binary " + "czNjcjN0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := parse(t, tc.doc)
			if err == nil {
				t.Fatalf("parse %q: got nil error (secret IsZero=%v), want one", tc.doc, s.IsZero())
			}
			for _, leak := range []string{canary, "12345678", "czNjcjN0"} {
				if strings.Contains(tc.doc, leak) && strings.Contains(err.Error(), leak) {
					t.Errorf("parse %q: error %q echoes the value", tc.doc, err)
				}
			}
		})
	}
}

type exported struct {
	User     string
	Password secret.Secret
	Ptr      *secret.Secret
}

type withUnexported struct {
	user     string
	password secret.Secret
}

// client mirrors how a kind's client keeps its validated config: in an
// unexported field.
type client struct {
	cfg exported
}

// TestNeverPrinted formats secrets of every source through every path a
// config, a client or a log line may take.
func TestNeverPrinted(t *testing.T) {
	// t.Setenv: not parallel.
	path := filepath.Join(t.TempDir(), "pw")
	writeFile(t, path, canary+"\n")
	t.Setenv("TOKENVEND_SECRET_TEST_PRINT", canary)
	sources := map[string]secret.Secret{
		"literal": secret.Literal(canary),
		"yaml":    mustParse(t, canary),
		"file":    mustParse(t, "{file: "+path+"}"),
		"env":     mustParse(t, "{env: TOKENVEND_SECRET_TEST_PRINT}"),
	}
	for name, s := range sources {
		if v, err := s.Value(); err != nil || v != canary {
			t.Fatalf("%s: Value got %q, %v; want %q, nil", name, v, err, canary)
		}
	}

	slogOut := func(json bool, log func(*slog.Logger)) string {
		var buf bytes.Buffer
		var h slog.Handler = slog.NewTextHandler(&buf, nil)
		if json {
			h = slog.NewJSONHandler(&buf, nil)
		}
		log(slog.New(h))
		return buf.String()
	}
	mustJSON := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("json.Marshal: %v", err)
		}
		return string(b)
	}
	mustYAML := func(v any) string {
		b, err := yaml.Marshal(v)
		if err != nil {
			t.Fatalf("yaml.Marshal: %v", err)
		}
		return string(b)
	}

	for name, s := range sources {
		cfg := exported{User: "ops", Password: s, Ptr: &s}
		renders := map[string]func() string{
			"%v":                 func() string { return fmt.Sprintf("%v", s) },
			"%s":                 func() string { return fmt.Sprintf("%s", s) },
			"%+v":                func() string { return fmt.Sprintf("%+v", s) },
			"%#v":                func() string { return fmt.Sprintf("%#v", s) },
			"%q":                 func() string { return fmt.Sprintf("%q", s) },
			"%x":                 func() string { return fmt.Sprintf("%x", s) },
			"%d":                 func() string { return fmt.Sprintf("%d", s) },
			"Sprint":             func() string { return fmt.Sprint(s) },
			"Sprint pointer":     func() string { return fmt.Sprint(&s) },
			"String":             s.String,
			"GoString":           s.GoString,
			"fmt.Errorf %v":      func() string { return fmt.Errorf("login with %v", s).Error() },
			"struct %v":          func() string { return fmt.Sprintf("%v", cfg) },
			"struct %+v":         func() string { return fmt.Sprintf("%+v", cfg) },
			"struct %#v":         func() string { return fmt.Sprintf("%#v", cfg) },
			"struct pointer %+v": func() string { return fmt.Sprintf("%+v", &cfg) },
			"slice %v":           func() string { return fmt.Sprintf("%v", []secret.Secret{s}) },
			"map %+v":            func() string { return fmt.Sprintf("%+v", map[string]secret.Secret{"pw": s}) },
			// A client keeps its config in an unexported field, where fmt
			// cannot call Format: the value must still not come out.
			"unexported field %+v":          func() string { return fmt.Sprintf("%+v", withUnexported{"ops", s}) },
			"client with unexported cfg %v": func() string { return fmt.Sprintf("%v", &client{cfg}) },
			"slog JSON":                     func() string { return slogOut(true, func(l *slog.Logger) { l.Info("m", "password", s) }) },
			"slog text":                     func() string { return slogOut(false, func(l *slog.Logger) { l.Info("m", "password", s) }) },
			"slog JSON pointer":             func() string { return slogOut(true, func(l *slog.Logger) { l.Info("m", "password", &s) }) },
			"slog JSON struct":              func() string { return slogOut(true, func(l *slog.Logger) { l.Info("m", "cfg", cfg) }) },
			"slog text struct":              func() string { return slogOut(false, func(l *slog.Logger) { l.Info("m", "cfg", cfg) }) },
			"slog JSON group": func() string {
				return slogOut(true, func(l *slog.Logger) { l.Info("m", slog.Group("provider", "password", s)) })
			},
			"slog text group": func() string {
				return slogOut(false, func(l *slog.Logger) { l.Info("m", slog.Group("provider", "password", s)) })
			},
			"slog JSON With": func() string {
				return slogOut(true, func(l *slog.Logger) { l.With("password", s).WithGroup("g").Info("m", "pw", s) })
			},
			"slog text With": func() string {
				return slogOut(false, func(l *slog.Logger) { l.With("password", s).WithGroup("g").Info("m", "pw", s) })
			},
			"json.Marshal":        func() string { return mustJSON(s) },
			"json.Marshal struct": func() string { return mustJSON(cfg) },
			"yaml.Marshal":        func() string { return mustYAML(s) },
			"yaml.Marshal struct": func() string { return mustYAML(cfg) },
		}
		for how, render := range renders {
			t.Run(name+"/"+how, func(t *testing.T) {
				got := render()
				if strings.Contains(got, canary) {
					t.Errorf("got %q, which holds the secret", got)
				}
				if strings.Contains(how, "unexported") {
					return // fmt cannot reach Format there; only absence is promised
				}
				if !strings.Contains(got, "[redacted]") {
					t.Errorf("got %q, want it to show [redacted]", got)
				}
			})
		}
	}
}

func TestRedactedEncodings(t *testing.T) {
	t.Parallel()
	s := secret.Literal(canary)
	b, err := json.Marshal(s)
	if err != nil || string(b) != `"[redacted]"` {
		t.Errorf("json.Marshal: got %s, %v; want %q, nil", b, err, `"[redacted]"`)
	}
	y, err := yaml.Marshal(map[string]secret.Secret{"password": s})
	if err != nil || string(y) != "password: '[redacted]'\n" {
		t.Errorf("yaml.Marshal: got %q, %v; want %q, nil", y, err, "password: '[redacted]'\n")
	}
	if got := s.LogValue(); got.Kind() != slog.KindString || got.String() != "[redacted]" {
		t.Errorf("LogValue: got %v (kind %v), want the string [redacted]", got, got.Kind())
	}
	if got := fmt.Sprintf("%10s|%-3v|%q", s, s, s); got != "[redacted]|[redacted]|[redacted]" {
		t.Errorf("widths and verbs: got %q, want every one exactly [redacted]", got)
	}
}
