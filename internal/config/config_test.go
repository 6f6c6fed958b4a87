package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/secret"
)

// canary stands for a secret pasted into the wrong key: no error may echo it.
const canary = "s3cr3t-canary-Zq9"

// providers is a valid providers section to append to documents that test
// something else.
const providers = `
providers:
  - name: kyc
    kind: kyc
`

// lines splits a (joined) error into its lines, one per bad field.
func lines(err error) []string {
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

func mustParse(t *testing.T, doc string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: got error\n%v\nwant nil", err)
	}
	return cfg
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, doc string }{
		{"sections absent", providers},
		{"sections empty", "server:\ncache:\n" + providers},
		{"sections {}", "server: {}\ncache: {}\n" + providers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := mustParse(t, tc.doc)
			wantServer := config.Server{
				GRPCAddr:        "127.0.0.1:9090",
				HTTPAddr:        "127.0.0.1:8080",
				ShutdownTimeout: 15 * time.Second,
			}
			if !reflect.DeepEqual(cfg.Server, wantServer) {
				t.Errorf("Server: got %+v, want %+v", cfg.Server, wantServer)
			}
			wantCache := config.Cache{
				RefreshBefore:      5 * time.Minute,
				MinValid:           30 * time.Second,
				RejectBackoff:      time.Minute,
				MaxRejectBackoff:   30 * time.Minute,
				LoginTimeout:       30 * time.Second,
				LoginAttempts:      3,
				AttemptTimeout:     10 * time.Second,
				MinReloginInterval: 30 * time.Second,
			}
			if cfg.Cache != wantCache {
				t.Errorf("Cache: got %+v, want %+v", cfg.Cache, wantCache)
			}
		})
	}
}

func TestExplicitValuesKept(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, `
server:
  grpc_addr: "[::1]:7000"
  http_addr: localhost:7001
  shutdown_timeout: 2s
cache:
  refresh_before: 10m
  min_valid: 1m
  reject_backoff: 5s
  max_reject_backoff: 1h
  login_timeout: 45s
  login_attempts: 10
  attempt_timeout: 5s
  min_relogin_interval: 1m
`+providers)
	wantServer := config.Server{GRPCAddr: "[::1]:7000", HTTPAddr: "localhost:7001", ShutdownTimeout: 2 * time.Second}
	if !reflect.DeepEqual(cfg.Server, wantServer) {
		t.Errorf("Server: got %+v, want %+v", cfg.Server, wantServer)
	}
	wantCache := config.Cache{
		RefreshBefore: 10 * time.Minute, MinValid: time.Minute, RejectBackoff: 5 * time.Second,
		MaxRejectBackoff: time.Hour, LoginTimeout: 45 * time.Second, LoginAttempts: 10,
		AttemptTimeout: 5 * time.Second, MinReloginInterval: time.Minute,
	}
	if cfg.Cache != wantCache {
		t.Errorf("Cache: got %+v, want %+v", cfg.Cache, wantCache)
	}
}

// issue2Example is the example configuration of issue 2, verbatim.
const issue2Example = `server:
  grpc_addr: 127.0.0.1:9090      # defaults shown
  http_addr: 127.0.0.1:8080
cache:
  refresh_before: 5m   # start a background refresh this long before a cached token expires
  min_valid: 30s       # never hand out a cached token with less than this left
providers:
  - name: kyc                    # what callers pass as ` + "`provider`" + `
    kind: kyc
    base_url: http://127.0.0.1:8001
    username: ops@example.com
    password: {env: KYC_PASSWORD}  # a secret: a literal string, {env: NAME} or {file: /path}
    token_ttl: 1h                  # used only when the JWT carries no exp
`

// kind is a provider kind's config struct, shaped like kyc.Config, with a
// field of every type describe knows.
type kind struct {
	BaseURL  string            `yaml:"base_url"`
	Username string            `yaml:"username"`
	Password secret.Secret     `yaml:"password"`
	TokenTTL time.Duration     `yaml:"token_ttl"`
	Scopes   []string          `yaml:"scopes"`
	Headers  map[string]string `yaml:"headers"`
	Insecure bool              `yaml:"insecure"`
	Retries  int               `yaml:"retries"`
	Extra    struct {
		Audience string `yaml:"audience"`
	} `yaml:"extra"`

	validated bool
}

// Validate follows kyc.Config.Validate: FieldErrors named by key, defaults
// filled in.
func (k *kind) Validate() error {
	k.validated = true
	var errs []error
	if err := config.CheckURL(k.BaseURL); err != nil {
		errs = append(errs, config.Errorf("base_url", "%v", err))
	}
	if k.Username == "" {
		errs = append(errs, config.Errorf("username", "is required"))
	}
	if _, err := k.Password.Value(); err != nil {
		errs = append(errs, config.Errorf("password", "%v", err))
	}
	if k.TokenTTL < 0 {
		errs = append(errs, config.Errorf("token_ttl", "must be positive"))
	}
	if k.TokenTTL == 0 {
		k.TokenTTL = time.Hour
	}
	return errors.Join(errs...)
}

func TestIssue2Example(t *testing.T) {
	// t.Setenv: not parallel.
	t.Setenv("KYC_PASSWORD", canary)
	cfg := mustParse(t, issue2Example)
	if cfg.Server.GRPCAddr != "127.0.0.1:9090" || cfg.Server.HTTPAddr != "127.0.0.1:8080" {
		t.Errorf("Server: got %+v, want grpc 127.0.0.1:9090 and http 127.0.0.1:8080", cfg.Server)
	}
	if cfg.Cache.RefreshBefore != 5*time.Minute || cfg.Cache.MinValid != 30*time.Second {
		t.Errorf("Cache: got %+v, want refresh_before 5m and min_valid 30s", cfg.Cache)
	}
	if len(cfg.Providers) != 1 {
		t.Fatalf("Providers: got %d, want 1", len(cfg.Providers))
	}
	p := cfg.Providers[0]
	if p.Name != "kyc" || p.Kind != "kyc" || p.Path != "providers[0]" {
		t.Errorf("provider: got name %q kind %q path %q, want kyc, kyc, providers[0]", p.Name, p.Kind, p.Path)
	}
	var k kind
	if err := p.Load(&k); err != nil {
		t.Fatalf("Load: got error\n%v\nwant nil", err)
	}
	if k.BaseURL != "http://127.0.0.1:8001" || k.Username != "ops@example.com" || k.TokenTTL != time.Hour {
		t.Errorf("kind: got base_url %q username %q token_ttl %v, want http://127.0.0.1:8001, ops@example.com, 1h",
			k.BaseURL, k.Username, k.TokenTTL)
	}
	if v, err := k.Password.Value(); err != nil || v != canary {
		t.Errorf("password: got %q, %v; want the value of KYC_PASSWORD, nil", v, err)
	}
}

func TestLoadFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "tokenvend.yaml")
	if err := os.WriteFile(path, []byte(providers), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil || len(cfg.Providers) != 1 || cfg.Providers[0].Name != "kyc" {
		t.Errorf("Load: got %+v, %v; want one provider named kyc, nil", cfg, err)
	}
	if _, err := config.Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: got %v, want an error matching os.ErrNotExist", err)
	}
}

// TestBadField checks that each problem is reported once, on a line of its
// own naming the field's full path, and that no message echoes a value.
func TestBadField(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 64)
	for _, tc := range []struct {
		name string
		doc  string
		want string // one full line of the error
	}{
		// Unknown keys, at every level.
		{"unknown top-level key", "bogus: 1\n" + providers, "bogus: unknown key"},
		{"unknown server key", "server:\n  grpc_adr: 127.0.0.1:1\n" + providers, "server.grpc_adr: unknown key"},
		{"unknown cache key", "cache:\n  refresh_befor: 5m\n" + providers, "cache.refresh_befor: unknown key"},
		{"key set twice", "server:\n  grpc_addr: 127.0.0.1:1\n  grpc_addr: 127.0.0.1:2\n" + providers, "server.grpc_addr: set twice"},

		// Wrong types: say what is expected, never echo the value.
		{"duration is not a duration", "cache:\n  refresh_before: " + canary + "\n" + providers,
			"cache.refresh_before: must be a duration such as 30s, 5m or 1h"},
		{"duration is a number", "cache:\n  min_valid: 30\n" + providers,
			"cache.min_valid: must be a duration such as 30s, 5m or 1h"},
		{"duration is a mapping", "server:\n  shutdown_timeout: {env: " + canary + "}\n" + providers,
			"server.shutdown_timeout: must be a duration such as 30s, 5m or 1h"},
		{"int is not a number", "cache:\n  login_attempts: " + canary + "\n" + providers,
			"cache.login_attempts: must be a whole number"},
		{"string is a list", "server:\n  grpc_addr: [" + canary + "]\n" + providers,
			"server.grpc_addr: must be a string"},
		{"section is a scalar", "server: " + canary + "\n" + providers, "server: must be a mapping"},
		{"section is a list", "cache: [" + canary + "]\n" + providers, "cache: must be a mapping"},
		{"providers is a mapping", "providers: {name: " + canary + "}\n", "providers: must be a list"},
		{"provider is a scalar", "providers: [" + canary + "]\n", "providers[0]: must be a mapping"},

		// Addresses.
		{"address without port", "server:\n  grpc_addr: " + canary + "\n" + providers, "server.grpc_addr: must be host:port"},
		{"port out of range", "server:\n  http_addr: 127.0.0.1:65536\n" + providers,
			"server.http_addr: port must be a number from 0 to 65535"},
		{"port not a number", "server:\n  http_addr: 127.0.0.1:http\n" + providers,
			"server.http_addr: port must be a number from 0 to 65535"},
		{"bad host", "server:\n  grpc_addr: bad_host!:9000\n" + providers,
			"server.grpc_addr: host must be an IP address or a host name"},
		{"same address twice", "server:\n  grpc_addr: 127.0.0.1:7000\n  http_addr: 127.0.0.1:7000\n" + providers,
			"server.http_addr: must differ from server.grpc_addr"},
		{"http defaulted onto grpc", "server:\n  grpc_addr: 127.0.0.1:8080\n" + providers,
			"server.http_addr: must differ from server.grpc_addr"},

		// Allowed hosts.
		{"allowed host with a port", "server:\n  allowed_hosts: [tokenvend.example.com:8080]\n" + providers,
			"server.allowed_hosts[0]: must be a host name such as tokenvend.example.com: no port, scheme or wildcard"},
		{"allowed host is a URL", "server:\n  allowed_hosts: [ok.example, 'http://tokenvend.example.com']\n" + providers,
			"server.allowed_hosts[1]: must be a host name such as tokenvend.example.com: no port, scheme or wildcard"},
		{"allowed host is a wildcard", "server:\n  allowed_hosts: ['*.example.com']\n" + providers,
			"server.allowed_hosts[0]: must be a host name such as tokenvend.example.com: no port, scheme or wildcard"},
		{"allowed host is empty", "server:\n  allowed_hosts: ['']\n" + providers,
			"server.allowed_hosts[0]: must be a host name such as tokenvend.example.com: no port, scheme or wildcard"},
		{"allowed hosts is a string", "server:\n  allowed_hosts: tokenvend.example.com\n" + providers,
			"server.allowed_hosts: must be a list of strings"},

		// Ranges.
		{"negative shutdown_timeout", "server:\n  shutdown_timeout: -1s\n" + providers, "server.shutdown_timeout: must be positive"},
		{"negative refresh_before", "cache:\n  refresh_before: -5m\n" + providers, "cache.refresh_before: must be positive"},
		{"negative min_valid", "cache:\n  min_valid: -1s\n" + providers, "cache.min_valid: must not be negative"},
		{"negative reject_backoff", "cache:\n  reject_backoff: -1m\n" + providers, "cache.reject_backoff: must be positive"},
		{"max_reject_backoff below reject_backoff", "cache:\n  reject_backoff: 10m\n  max_reject_backoff: 5m\n" + providers,
			"cache.max_reject_backoff: must be at least cache.reject_backoff"},
		{"negative login_timeout", "cache:\n  login_timeout: -1s\n" + providers, "cache.login_timeout: must be positive"},
		{"zero attempt_timeout", "cache:\n  attempt_timeout: 0s\n" + providers, "cache.attempt_timeout: must be positive"},
		{"negative min_relogin_interval", "cache:\n  min_relogin_interval: -1s\n" + providers, "cache.min_relogin_interval: must be positive"},
		{"too many login_attempts", "cache:\n  login_attempts: 11\n" + providers, "cache.login_attempts: must be between 1 and 10"},
		{"negative login_attempts", "cache:\n  login_attempts: -1\n" + providers, "cache.login_attempts: must be between 1 and 10"},

		// Providers.
		{"no providers key", "server: {}\n", "providers: at least one provider is required"},
		{"empty providers list", "providers: []\n", "providers: at least one provider is required"},
		{"null providers", "providers:\n", "providers: at least one provider is required"},
		{"missing name", "providers:\n  - kind: kyc\n", "providers[0].name: is required"},
		{"missing kind", "providers:\n  - name: kyc\n", "providers[0].kind: is required"},
		{"upper-case name", "providers:\n  - {name: Kyc, kind: kyc}\n",
			"providers[0].name: must be lower-case letters, digits, '-' or '_', starting with a letter (at most 63)"},
		{"name starting with a digit", "providers:\n  - {name: 1kyc, kind: kyc}\n",
			"providers[0].name: must be lower-case letters, digits, '-' or '_', starting with a letter (at most 63)"},
		{"name with a space", "providers:\n  - {name: k yc, kind: kyc}\n",
			"providers[0].name: must be lower-case letters, digits, '-' or '_', starting with a letter (at most 63)"},
		{"name too long", "providers:\n  - {name: " + long + ", kind: kyc}\n",
			"providers[0].name: must be lower-case letters, digits, '-' or '_', starting with a letter (at most 63)"},
		{"duplicate name", "providers:\n  - {name: a, kind: kyc}\n  - {name: b, kind: kyc}\n  - {name: a, kind: kyc}\n",
			`providers[2].name: "a" is already used by providers[0]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Parse([]byte(tc.doc))
			got := lines(err)
			if n := count(got, tc.want); n != 1 {
				t.Errorf("got error lines %q, want %q exactly once (found %d times)", got, tc.want, n)
			}
			field, _, _ := strings.Cut(tc.want, ": ")
			if n := countPrefix(got, field+": "); n != 1 {
				t.Errorf("got error lines %q, want field %s named on exactly one line (found %d)", got, field, n)
			}
			if err != nil && strings.Contains(err.Error(), canary) {
				t.Errorf("got error %q, which echoes the value", err)
			}
		})
	}
}

func count(lines []string, s string) int {
	n := 0
	for _, l := range lines {
		if l == s {
			n++
		}
	}
	return n
}

func countPrefix(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

func TestGoodAddresses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ grpc, http string }{
		{"127.0.0.1:9090", "127.0.0.1:8080"},
		{":9090", ":8080"},
		{"[::1]:9090", "[::]:8080"},
		{"localhost:1", "tokenvend.internal.example.com:65535"},
		// Port 0 picks a free port: the same text on both is two ports.
		{"127.0.0.1:0", "127.0.0.1:0"},
	} {
		t.Run(tc.grpc+"+"+tc.http, func(t *testing.T) {
			t.Parallel()
			// Addresses beyond loopback need the explicit opt-out (see
			// TestLoopbackDefault); here only the address syntax is tested.
			cfg := mustParse(t, "server:\n  insecure_allow_any_caller: true\n  grpc_addr: \""+tc.grpc+"\"\n  http_addr: \""+tc.http+"\"\n"+providers)
			if cfg.Server.GRPCAddr != tc.grpc || cfg.Server.HTTPAddr != tc.http {
				t.Errorf("got %q and %q, want %q and %q", cfg.Server.GRPCAddr, cfg.Server.HTTPAddr, tc.grpc, tc.http)
			}
		})
	}
}

func TestAllowedHosts(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, "server:\n  allowed_hosts: [tokenvend.internal.example.com, TokenVend, a-b.c1]\n"+providers)
	if want := []string{"tokenvend.internal.example.com", "TokenVend", "a-b.c1"}; !slices.Equal(cfg.Server.AllowedHosts, want) {
		t.Errorf("got %q, want %q", cfg.Server.AllowedHosts, want)
	}
	for _, h := range []string{"-a.example", "a-.example", "a..example", "a.example.", strings.Repeat("a", 64) + ".example", "[::1]", "a_b.example"} {
		if config.ValidHostName(h) {
			t.Errorf("ValidHostName(%q): got true, want false", h)
		}
	}
}

func TestEmptyDocument(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{"", "\n\n", "# nothing but a comment\n", "---\n", "~\n", "{}\n"} {
		cfg, err := config.Parse([]byte(doc))
		if err == nil {
			t.Errorf("Parse(%q): got %+v, nil; want an error", doc, cfg)
			continue
		}
		if got := lines(err); !slices.Contains(got, "providers: at least one provider is required") {
			t.Errorf("Parse(%q): got %q, want it to say a provider is required", doc, got)
		}
	}
}

func TestNotAMapping(t *testing.T) {
	t.Parallel()
	_, err := config.Parse([]byte("- " + canary + "\n"))
	if err == nil {
		t.Fatal("Parse of a top-level list: got nil error, want one")
	}
	for _, l := range lines(err) {
		if strings.HasPrefix(l, ":") {
			t.Errorf("got line %q: an error about the whole document must not start with an empty field name", l)
		}
	}
	if !strings.Contains(err.Error(), "must be a mapping") || strings.Contains(err.Error(), canary) {
		t.Errorf("got %q, want it to say the document must be a mapping, without echoing it", err)
	}
}

func TestInvalidYAML(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{
		"server: [\n",
		"providers:\n  - name: kyc\n    password: \"" + canary + "\n",
		"providers:\n\t- name: kyc\n",
	} {
		_, err := config.Parse([]byte(doc))
		if err == nil || !strings.HasPrefix(err.Error(), "not valid YAML: ") {
			t.Errorf("Parse(%q): got %v, want an error starting %q", doc, err, "not valid YAML: ")
			continue
		}
		if strings.Contains(err.Error(), canary) {
			t.Errorf("Parse(%q): got %q, which echoes the value", doc, err)
		}
	}
}

// TestEveryBadFieldAtOnce proves one Parse names every bad field, each once,
// so an operator fixes a config in one round.
func TestEveryBadFieldAtOnce(t *testing.T) {
	t.Parallel()
	doc := `
bogus: 1
server:
  grpc_adr: 127.0.0.1:1
  http_addr: nope
  shutdown_timeout: -1s
cache:
  refresh_befor: 5m
  min_valid: ` + canary + `
  login_attempts: 11
  reject_backoff: -1m
providers:
  - name: Bad Name
    kind: kyc
  - kind: kyc
  - name: dup
    kind: kyc
  - name: dup
`
	want := []string{
		"bogus: unknown key",
		"server.grpc_adr: unknown key",
		"server.http_addr: must be host:port",
		"server.shutdown_timeout: must be positive",
		"cache.refresh_befor: unknown key",
		"cache.min_valid: must be a duration such as 30s, 5m or 1h",
		"cache.login_attempts: must be between 1 and 10",
		"cache.reject_backoff: must be positive",
		"providers[0].name: must be lower-case letters, digits, '-' or '_', starting with a letter (at most 63)",
		"providers[1].name: is required",
		`providers[3].name: "dup" is already used by providers[2]`,
		"providers[3].kind: is required",
	}
	_, err := config.Parse([]byte(doc))
	got := lines(err)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("got %d lines:\n%s\nwant %d:\n%s", len(got), strings.Join(got, "\n"), len(want), strings.Join(want, "\n"))
	}
	if err != nil && strings.Contains(err.Error(), canary) {
		t.Errorf("got %q, which echoes a value", err)
	}
}

// TestErrorOrderStable: `tokenvend check` must print the same report for
// the same file every time.
func TestErrorOrderStable(t *testing.T) {
	t.Parallel()
	doc := "server:\n  grpc_addr: nope\n  http_addr: nope2\n" + providers
	_, first := config.Parse([]byte(doc))
	if first == nil {
		t.Fatal("got nil error, want one")
	}
	for range 50 {
		_, err := config.Parse([]byte(doc))
		if err.Error() != first.Error() {
			t.Fatalf("got %q, then %q: want the same report each time", first, err)
		}
	}
}

func TestValidName(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]bool{
		"a": true, "kyc": true, "kyc-eu_2": true, "a" + strings.Repeat("0", 62): true,
		"": false, "Kyc": false, "1kyc": false, "-kyc": false, "_kyc": false, "ky c": false,
		"kyc!": false, "kyc.eu": false, "a" + strings.Repeat("0", 63): false, "kyç": false,
	} {
		if got := config.ValidName(name); got != want {
			t.Errorf("ValidName(%q): got %v, want %v", name, got, want)
		}
	}
}

func TestAnchorsAndAliases(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, `
cache:
  refresh_before: &long 2m
  login_timeout: *long
providers:
  - name: a
    kind: &kind kyc
    base_url: &url http://127.0.0.1:8001
    username: ops
    password: &pw {file: /run/secrets/pw}
    scopes: &scopes [read, write]
  - name: b
    kind: *kind
    base_url: *url
    username: ops
    password: *pw
    scopes: *scopes
`)
	if cfg.Cache.RefreshBefore != 2*time.Minute || cfg.Cache.LoginTimeout != 2*time.Minute {
		t.Errorf("cache: got refresh_before %v login_timeout %v, want 2m and 2m", cfg.Cache.RefreshBefore, cfg.Cache.LoginTimeout)
	}
	for i, p := range cfg.Providers {
		if p.Kind != "kyc" {
			t.Errorf("providers[%d].kind: got %q, want %q", i, p.Kind, "kyc")
		}
		var k kind
		if err := p.Decode(&k); err != nil {
			t.Errorf("providers[%d] Decode: got %v, want nil", i, err)
			continue
		}
		if k.BaseURL != "http://127.0.0.1:8001" || !slices.Equal(k.Scopes, []string{"read", "write"}) || k.Password.IsZero() {
			t.Errorf("providers[%d]: got base_url %q scopes %q password set %v; want the anchored values",
				i, k.BaseURL, k.Scopes, !k.Password.IsZero())
		}
	}
}

// TestMergeKeys: `<<: *anchor` is how YAML shares a block between providers.
func TestMergeKeys(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte(`
providers:
  - &common
    name: a
    kind: kyc
    base_url: http://127.0.0.1:8001
    username: ops
    password: pw
  - <<: *common
    name: b
`))
	if err != nil {
		t.Fatalf("Parse: got error\n%v\nwant nil", err)
	}
	p := cfg.Providers[1]
	if p.Name != "b" || p.Kind != "kyc" {
		t.Errorf("providers[1]: got name %q kind %q, want b, kyc", p.Name, p.Kind)
	}
	var k kind
	if err := p.Load(&k); err != nil {
		t.Fatalf("providers[1] Load: got error\n%v\nwant nil", err)
	}
	if k.BaseURL != "http://127.0.0.1:8001" || k.Username != "ops" {
		t.Errorf("providers[1]: got base_url %q username %q, want the merged values", k.BaseURL, k.Username)
	}
}

func TestProviderLoad(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		keys string // the provider's kind keys, indented by four spaces
		want []string
	}{
		{
			name: "valid",
			keys: "    base_url: https://kyc.example.com\n    username: ops\n    password: pw\n",
		},
		{
			name: "typo in a key",
			keys: "    base_ulr: https://kyc.example.com\n    username: ops\n    password: pw\n",
			want: []string{"providers[1].base_ulr: unknown key", "providers[1].base_url: is required"},
		},
		{
			name: "name and kind are not the kind's keys but are not unknown either",
			keys: "    base_url: https://kyc.example.com\n    username: ops\n    password: pw\n    path: x\n",
			want: []string{"providers[1].path: unknown key"},
		},
		{
			name: "validation only",
			keys: "    base_url: ftp://kyc.example.com\n    password: {env: TOKENVEND_CONFIG_TEST_UNSET}\n    token_ttl: -1h\n",
			want: []string{
				"providers[1].base_url: must be an absolute http or https URL",
				"providers[1].username: is required",
				"providers[1].password: environment variable TOKENVEND_CONFIG_TEST_UNSET is not set",
				"providers[1].token_ttl: must be positive",
			},
		},
		{
			// Each of these fails to decode, and validation would also
			// complain about it: it must be named once, by the decoder.
			name: "decode failure not reported again",
			keys: "    base_url: [" + canary + "]\n    username: {a: " + canary + "}\n    password: {foo: " + canary + "}\n",
			want: []string{
				"providers[1].base_url: must be a string",
				"providers[1].username: must be a string",
				`providers[1].password: unknown or empty key "foo": want env or file`,
			},
		},
		{
			name: "wrong types name the field and what is expected",
			keys: "    base_url: https://kyc.example.com\n    username: ops\n    password: pw\n" +
				"    token_ttl: " + canary + "\n    scopes: " + canary + "\n    headers: [" + canary + "]\n" +
				"    insecure: " + canary + "\n    retries: " + canary + "\n    extra: " + canary + "\n",
			want: []string{
				"providers[1].token_ttl: must be a duration such as 30s, 5m or 1h",
				"providers[1].scopes: must be a list of strings",
				"providers[1].headers: must be a mapping of strings",
				"providers[1].insecure: must be true or false",
				"providers[1].retries: must be a whole number",
				"providers[1].extra: must be a mapping",
			},
		},
		{
			name: "unknown key in a nested mapping",
			keys: "    base_url: https://kyc.example.com\n    username: ops\n    password: pw\n    extra: {audiance: x}\n",
			want: []string{"providers[1].extra.audiance: unknown key"},
		},
		{
			name: "secret given as a number",
			keys: "    base_url: https://kyc.example.com\n    username: ops\n    password: 12345678\n",
			want: []string{"providers[1].password: must be a string, {env: NAME} or {file: PATH}"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := mustParse(t, "providers:\n  - {name: first, kind: other}\n  - name: second\n    kind: kyc\n"+tc.keys)
			p := cfg.Providers[1]
			var k kind
			err := p.Load(&k)
			got := lines(err)
			if !k.validated {
				t.Error("Load did not call Validate")
			}
			gotSorted, want := slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(gotSorted, want) {
				t.Errorf("got %d lines:\n%s\nwant %d:\n%s", len(got), strings.Join(got, "\n"), len(want), strings.Join(want, "\n"))
			}
			if err != nil && (strings.Contains(err.Error(), canary) || strings.Contains(err.Error(), "12345678")) {
				t.Errorf("got %q, which echoes a value", err)
			}
		})
	}
}

// Common is a block of keys several kinds share.
type Common struct {
	BaseURL string `yaml:"base_url"`
}

// TestInline: keys of an inlined struct belong to the enclosing mapping.
func TestInline(t *testing.T) {
	t.Parallel()
	type withInline struct {
		Common   `yaml:",inline"`
		Username string `yaml:"username"`
	}
	cfg := mustParse(t, "providers:\n  - {name: a, kind: kyc, base_url: 'http://h', username: u, base_urll: x}\n")
	var k withInline
	err := cfg.Providers[0].Decode(&k)
	if got, want := lines(err), []string{"providers[0].base_urll: unknown key"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if k.BaseURL != "http://h" || k.Username != "u" {
		t.Errorf("got base_url %q username %q, want http://h, u", k.BaseURL, k.Username)
	}
}

func TestProviderLoadAppliesKindDefaults(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, "providers:\n  - {name: a, kind: kyc, base_url: 'http://h', username: u, password: p}\n")
	var k kind
	if err := cfg.Providers[0].Load(&k); err != nil {
		t.Fatalf("Load: got %v, want nil", err)
	}
	if k.TokenTTL != time.Hour {
		t.Errorf("token_ttl: got %v, want the kind's default 1h", k.TokenTTL)
	}
	if v, err := k.Password.Value(); err != nil || v != "p" {
		t.Errorf("password: got %q, %v; want %q, nil", v, err, "p")
	}
}

// plainErr is a Validate result that is not a FieldError.
type plainErr struct{ kind }

func (p *plainErr) Validate() error { return errors.New("boom") }

func TestProviderLoadPlainError(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, "providers:\n  - {name: a, kind: kyc}\n")
	err := cfg.Providers[0].Load(&plainErr{})
	if got, want := lines(err), []string{"providers[0]: boom"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestNest(t *testing.T) {
	t.Parallel()
	if err := config.Nest("providers[0]", nil); err != nil {
		t.Errorf("Nest of nil: got %v, want nil", err)
	}
	inner := errors.Join(
		config.Errorf("password", "is required"),
		errors.Join(config.Errorf("extra.audience", "is required"), errors.New("plain")),
	)
	err := config.Nest("providers[2]", inner)
	want := []string{"providers[2].password: is required", "providers[2].extra.audience: is required", "providers[2]: plain"}
	if got := lines(err); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	var fe *config.FieldError
	if !errors.As(err, &fe) || fe.Path != "providers[2].password" || fe.Msg != "is required" {
		t.Errorf("errors.As FieldError: got %+v, want path providers[2].password, msg %q", fe, "is required")
	}
	// Nesting twice builds the full path.
	if got, want := config.Nest("a", config.Nest("b", config.Errorf("c", "x"))).Error(), "a.b.c: x"; got != want {
		t.Errorf("double Nest: got %q, want %q", got, want)
	}
	if got, want := config.Nest("", config.Errorf("c", "x")).Error(), "c: x"; got != want {
		t.Errorf("Nest with no prefix: got %q, want %q", got, want)
	}
}

func TestJoinAndErrorf(t *testing.T) {
	t.Parallel()
	if got := config.Join("", "server"); got != "server" {
		t.Errorf(`Join("", "server"): got %q, want "server"`, got)
	}
	if got := config.Join("providers[0]", "name"); got != "providers[0].name" {
		t.Errorf(`Join("providers[0]", "name"): got %q, want "providers[0].name"`, got)
	}
	if got := config.Errorf("cache.min_valid", "must be %s", "positive").Error(); got != "cache.min_valid: must be positive" {
		t.Errorf("Errorf: got %q, want %q", got, "cache.min_valid: must be positive")
	}
}

func TestCheckURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url  string
		want string // "" for accepted
	}{
		{"http://127.0.0.1:8001", ""},
		{"https://kyc.example.com", ""},
		{"https://kyc.example.com:8443/api/v1/", ""},
		{"HTTPS://KYC.EXAMPLE.COM", ""},
		{"http://[::1]:8001", ""},
		{"", "is required"},
		{"ftp://kyc.example.com", "must be an absolute http or https URL"},
		{"kyc.example.com", "must be an absolute http or https URL"},
		{"/api/v1", "must be an absolute http or https URL"},
		{"http://", "must be an absolute http or https URL"},
		{"http:///path", "must be an absolute http or https URL"},
		{"http//kyc.example.com", "must be an absolute http or https URL"},
		{"http://kyc example.com", "must be an absolute http or https URL"},
		{"mailto:ops@example.com", "must be an absolute http or https URL"},
		{"https://ops:" + canary + "@kyc.example.com", "must not carry credentials: use the secret keys"},
		{"https://ops@kyc.example.com", "must not carry credentials: use the secret keys"},
		{"https://:" + canary + "@kyc.example.com/", "must not carry credentials: use the secret keys"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			t.Parallel()
			err := config.CheckURL(tc.url)
			var got string
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("CheckURL(%q): got %q, want %q", tc.url, got, tc.want)
			}
		})
	}
}

func TestDecodeUnsetProvider(t *testing.T) {
	t.Parallel()
	// A Provider built in code (the demo, tests) has no YAML behind it:
	// Decode leaves the struct alone.
	k := kind{Username: "kept"}
	if err := (config.Provider{Name: "a", Kind: "kyc"}).Decode(&k); err != nil || k.Username != "kept" {
		t.Errorf("Decode with no YAML: got %v, username %q; want nil, kept", err, k.Username)
	}
}

// TestExplicitZero: a key set to zero means zero; defaults fill only keys
// that are absent.
func TestExplicitZero(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte("cache:\n  min_valid: 0s\nproviders:\n  - {name: a, kind: k}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cache.MinValid != 0 {
		t.Errorf("min_valid: 0s: got %v, want 0", cfg.Cache.MinValid)
	}
	_, err = config.Parse([]byte("cache:\n  login_attempts: 0\nproviders:\n  - {name: a, kind: k}\n"))
	if err == nil || !strings.Contains(err.Error(), "cache.login_attempts: must be between 1 and 10") {
		t.Errorf("login_attempts: 0: got %v, want it refused", err)
	}
}

func TestCallersValidation(t *testing.T) {
	t.Parallel()
	_, err := config.Parse([]byte(`
server:
  tls: {cert: /nonexistent.crt}
callers:
  - id: spiffe://mesh/a
    allow: [{provider: nope}, {provider: a, scopes: ["a*b", ""]}]
  - id: spiffe://mesh/a
    api_key_sha256: abc
  - {}
providers:
  - {name: a, kind: k}
`))
	for _, want := range []string{
		"server.tls: cert and key go together",
		"callers[0].id: a caller without api_key_sha256 is identified by its certificate, which needs server.tls.client_ca",
		`callers[0].allow[0].provider: no provider named "nope" is configured`,
		"callers[0].allow[1].scopes[0]: must be a scope",
		"callers[0].allow[1].scopes[1]: must be a scope",
		`callers[1].id: "spiffe://mesh/a" is already used by callers[0]`,
		"callers[1].api_key_sha256: must be 64 hex digits",
		"callers[2].id: is required",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	_, err = config.Parse([]byte("server:\n  tls: {cert: /nonexistent.crt, key: /nonexistent.key}\nproviders:\n  - {name: a, kind: k}\n"))
	if err == nil || !strings.Contains(err.Error(), "server.tls.cert: cannot load the certificate and key") {
		t.Errorf("unreadable certificate: got %v, want it named", err)
	}
}

// TestRefreshBeforeMustExceedMinValid: a long-lived token is refreshed
// refresh_before ahead of its expiry and handed out until min_valid before
// it; a window between them shorter than one upstream attempt leaves
// callers waiting for the refresh.
func TestRefreshBeforeMustExceedMinValid(t *testing.T) {
	t.Parallel()
	const want = "cache.refresh_before: must be longer than cache.min_valid by at least cache.attempt_timeout"
	for _, tc := range []struct {
		cache string
		ok    bool
	}{
		{"refresh_before: 10s\n  min_valid: 30s", false},
		{"refresh_before: 30s\n  min_valid: 30s", false},
		// Longer than min_valid, but by less than an attempt (10s).
		{"refresh_before: 31s\n  min_valid: 30s", false},
		{"refresh_before: 40s\n  min_valid: 30s", true},
		{"refresh_before: 40s\n  min_valid: 30s\n  attempt_timeout: 11s", false},
		{"refresh_before: 5m\n  min_valid: 4m55s\n  attempt_timeout: 5s", true},
	} {
		_, err := config.Parse([]byte("cache:\n  " + tc.cache + "\nproviders:\n  - {name: a, kind: k}\n"))
		refused := err != nil && strings.Contains(err.Error(), want)
		if refused == tc.ok {
			t.Errorf("%q: got %v, want refused %v", tc.cache, err, !tc.ok)
		}
	}
}

func TestEmptyScopeListIsRefused(t *testing.T) {
	t.Parallel()
	_, err := config.Parse([]byte("callers:\n  - {id: key:a, api_key_sha256: " + strings.Repeat("ab", 32) + ", allow: [{provider: a, scopes: []}]}\nproviders:\n  - {name: a, kind: k}\n"))
	if err == nil || !strings.Contains(err.Error(), "callers[0].allow[0].scopes: an empty list grants nothing") {
		t.Errorf("scopes: []: got %v, want it refused", err)
	}
}

func TestSubjectsValidation(t *testing.T) {
	t.Parallel()
	key := strings.Repeat("ab", 32)
	_, err := config.Parse([]byte(`
callers:
  - id: key:a
    api_key_sha256: ` + key + `
    allow:
      - {provider: a, scopes: [x], subjects: []}
      - {provider: a, scopes: [x], subjects: ["*@*.example.com", "", "ok@example.com", "svc-*", "a` + "\\t" + `b", "` + strings.Repeat("s", 257) + `"]}
providers:
  - {name: a, kind: k}
`))
	for _, want := range []string{
		"callers[0].allow[0].subjects: an empty list allows no subject",
		`callers[0].allow[1].subjects[0]: must be a subject, "*", or a pattern with one "*"`,
		"callers[0].allow[1].subjects[1]: must be a subject",
		"callers[0].allow[1].subjects[4]: must be a subject",
		"callers[0].allow[1].subjects[5]: must be a subject",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	for _, good := range []string{"subjects[2]", "subjects[3]"} {
		if err != nil && strings.Contains(err.Error(), good) {
			t.Errorf("a good pattern refused (%s):\n%v", good, err)
		}
	}
}
