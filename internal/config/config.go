// Package config is tokenvend's configuration: one typed struct loaded from
// YAML, strictly (unknown keys are errors), with defaults applied and every
// bad field named in the error. Each provider's kind-specific keys are
// decoded later by the kind itself through Provider.Decode, so this package
// knows nothing about the upstream schemes.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole service configuration.
type Config struct {
	Server    Server     `yaml:"server"`
	Cache     Cache      `yaml:"cache"`
	Providers []Provider `yaml:"providers"`
	// Callers, when present (even empty), are the only callers that get
	// tokens. Absent, anyone who reaches the ports does, so the service
	// then listens on loopback only.
	Callers []Caller `yaml:"callers"`
	// Store is where replicas share state; absent, in memory.
	Store Store `yaml:"store"`
}

// Server says where the service listens.
type Server struct {
	GRPCAddr string `yaml:"grpc_addr"`
	HTTPAddr string `yaml:"http_addr"`
	// ShutdownTimeout bounds how long in-flight calls may take to finish
	// after SIGTERM before the servers are stopped hard.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// TLS, when its cert is set, makes both ports serve TLS.
	TLS TLS `yaml:"tls"`
	// TLSTerminatedByMesh says a mesh sidecar in the pod (Istio, Consul)
	// terminates mutual TLS in front of the ports, which then may serve
	// plaintext to it, and identifies callers by the x-forwarded-client-cert
	// header the sidecar sets. It trusts that header: only the sidecar may
	// reach the ports.
	TLSTerminatedByMesh bool `yaml:"tls_terminated_by_mesh"`
	// InsecureAllowAnyCaller lets a service without callers listen beyond
	// loopback. Only for networks where reaching the port is the policy.
	InsecureAllowAnyCaller bool `yaml:"insecure_allow_any_caller"`
	// AllowedHosts are the host names, beyond IP literals and localhost,
	// that a request to the HTTP port may name in its Host header when no
	// callers are configured. Without callers a token goes to whoever
	// asks, so a web page whose name rebinds to 127.0.0.1 must not be
	// answered.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// ProxyAddr, when set, is where proxy mode listens (see Proxy).
	ProxyAddr string `yaml:"proxy_addr"`
}

// Cache tunes how credentials are cached, refreshed and retried.
type Cache struct {
	// RefreshBefore starts a background refresh this long before a cached
	// token expires.
	RefreshBefore time.Duration `yaml:"refresh_before"`
	// MinValid is the least validity a cached token must have left to be
	// handed out.
	MinValid time.Duration `yaml:"min_valid"`
	// RejectBackoff is how long logins are held after an upstream rejects
	// the configured credentials; it doubles on each further rejection up
	// to MaxRejectBackoff, so a wrong password cannot lock an account.
	RejectBackoff    time.Duration `yaml:"reject_backoff"`
	MaxRejectBackoff time.Duration `yaml:"max_reject_backoff"`
	// LoginTimeout bounds one shared login, retries included.
	LoginTimeout time.Duration `yaml:"login_timeout"`
	// AttemptTimeout bounds one exchange with an upstream, so that one
	// hung connection is cut and retried within LoginTimeout instead of
	// using it up.
	AttemptTimeout time.Duration `yaml:"attempt_timeout"`
	// MinReloginInterval is the least time between two logins for one
	// key that only a caller's min_valid_for asks for: a caller cannot
	// make tokenvend hammer an upstream account.
	MinReloginInterval time.Duration `yaml:"min_relogin_interval"`
	// LoginAttempts is how many times a transient failure (network, 5xx)
	// is tried before callers get UNAVAILABLE.
	LoginAttempts int `yaml:"login_attempts"`
}

// Provider is one configured upstream. Name and Kind are common to all;
// the rest of its keys belong to its kind and are read with Decode.
type Provider struct {
	Name string `yaml:"name"`
	Kind string `yaml:"kind"`
	// Path is the provider's place in the file, e.g. "providers[2]", for
	// error messages.
	Path string `yaml:"-"`
	// Proxy is the provider's proxy block, nil when it has none.
	Proxy *Proxy `yaml:"-"`
	node  *yaml.Node
}

// Defaults for every optional setting.
const (
	DefaultGRPCAddr         = "127.0.0.1:9090"
	DefaultHTTPAddr         = "127.0.0.1:8080"
	DefaultShutdownTimeout  = 15 * time.Second
	DefaultRefreshBefore    = 5 * time.Minute
	DefaultMinValid         = 30 * time.Second
	DefaultRejectBackoff    = time.Minute
	DefaultMaxRejectBackoff = 30 * time.Minute
	DefaultLoginTimeout     = 30 * time.Second
	DefaultLoginAttempts    = 3
	DefaultAttemptTimeout   = 10 * time.Second
	DefaultMinRelogin       = 30 * time.Second
)

// UnmarshalYAML keeps the provider's node for its kind to decode later.
func (p *Provider) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return errors.New("must be a mapping")
	}
	p.node = n
	kv := pairs(n)
	for i := 0; i+1 < len(kv); i += 2 {
		v := kv[i+1]
		for v.Kind == yaml.AliasNode {
			v = v.Alias
		}
		switch kv[i].Value {
		case "name":
			p.Name = v.Value
		case "kind":
			p.Kind = v.Value
		}
	}
	return nil
}

// Decode reads the provider's kind-specific keys into v, a pointer to the
// kind's config struct. Keys v does not name are errors, paths included.
func (p Provider) Decode(v any) error {
	if p.node == nil {
		return nil
	}
	return decode(p.node, v, p.Path, "name", "kind", "proxy")
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data)
}

// Parse decodes and validates a configuration document. The error names
// every bad field, one per line.
func Parse(data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	cfg := Default()
	if len(root.Content) == 0 {
		return nil, errors.New("providers: at least one provider is required")
	}
	err := decode(&root, cfg, "")
	for i := range cfg.Providers {
		cfg.Providers[i].Path = fmt.Sprintf("providers[%d]", i)
	}
	return cfg, dedupe(err, cfg.validate())
}

// Default returns a Config with every default set. Parse decodes on top of
// it, so a key that is set, even to zero, is what the file says.
func Default() *Config {
	return &Config{
		Server: Server{
			GRPCAddr:        DefaultGRPCAddr,
			HTTPAddr:        DefaultHTTPAddr,
			ShutdownTimeout: DefaultShutdownTimeout,
		},
		Cache: Cache{
			RefreshBefore:      DefaultRefreshBefore,
			MinValid:           DefaultMinValid,
			RejectBackoff:      DefaultRejectBackoff,
			MaxRejectBackoff:   DefaultMaxRejectBackoff,
			LoginTimeout:       DefaultLoginTimeout,
			LoginAttempts:      DefaultLoginAttempts,
			AttemptTimeout:     DefaultAttemptTimeout,
			MinReloginInterval: DefaultMinRelogin,
		},
	}
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// ValidName reports whether s can name a provider: lower-case letters,
// digits, '-' and '_', starting with a letter, at most 63 characters.
func ValidName(s string) bool { return nameRE.MatchString(s) }

func (c *Config) validate() error {
	var errs []error
	check := func(ok bool, path, msg string) {
		if !ok {
			errs = append(errs, Errorf(path, "%s", msg))
		}
	}
	for _, a := range [][2]string{{"server.grpc_addr", c.Server.GRPCAddr}, {"server.http_addr", c.Server.HTTPAddr}} {
		if err := validAddr(a[1]); err != nil {
			errs = append(errs, Errorf(a[0], "%v", err))
		} else if c.Callers == nil && !c.Server.InsecureAllowAnyCaller && !loopback(a[1]) {
			// The safe default: without callers, whoever reaches the port
			// gets every token, so the port must not be reachable.
			errs = append(errs, Errorf(a[0], "listens beyond loopback but no callers are configured: anyone who reaches the port would get every token; configure callers, or set server.insecure_allow_any_caller: true"))
		}
	}
	check(c.Server.GRPCAddr != c.Server.HTTPAddr || strings.HasSuffix(c.Server.HTTPAddr, ":0"), "server.http_addr", "must differ from server.grpc_addr")
	check(c.Server.ShutdownTimeout > 0, "server.shutdown_timeout", "must be positive")
	for i, h := range c.Server.AllowedHosts {
		check(ValidHostName(h), fmt.Sprintf("server.allowed_hosts[%d]", i),
			"must be a host name such as tokenvend.example.com: no port, scheme or wildcard")
	}
	check(c.Cache.RefreshBefore > 0, "cache.refresh_before", "must be positive")
	check(c.Cache.MinValid >= 0, "cache.min_valid", "must not be negative")
	// A token is handed out until MinValid before its expiry, and a
	// long-lived one is refreshed RefreshBefore ahead: what lies between
	// is the time a background refresh has to finish before callers must
	// wait for a login. It must hold at least one whole upstream attempt.
	check(c.Cache.RefreshBefore <= 0 || c.Cache.AttemptTimeout <= 0 || c.Cache.RefreshBefore >= c.Cache.MinValid+c.Cache.AttemptTimeout, "cache.refresh_before",
		fmt.Sprintf("must be longer than cache.min_valid by at least cache.attempt_timeout (%s): a refresh must have time to finish before callers stop getting the token",
			c.Cache.AttemptTimeout))
	check(c.Cache.RejectBackoff > 0, "cache.reject_backoff", "must be positive")
	check(c.Cache.MaxRejectBackoff >= c.Cache.RejectBackoff, "cache.max_reject_backoff", "must be at least cache.reject_backoff")
	check(c.Cache.LoginTimeout > 0, "cache.login_timeout", "must be positive")
	check(c.Cache.AttemptTimeout > 0, "cache.attempt_timeout", "must be positive")
	check(c.Cache.MinReloginInterval > 0, "cache.min_relogin_interval", "must be positive")
	check(c.Cache.LoginAttempts >= 1 && c.Cache.LoginAttempts <= 10, "cache.login_attempts", "must be between 1 and 10")
	check(len(c.Providers) > 0, "providers", "at least one provider is required")
	seen := map[string]string{}
	for _, p := range c.Providers {
		switch {
		case p.Name == "":
			errs = append(errs, Errorf(Join(p.Path, "name"), "is required"))
		case !ValidName(p.Name):
			errs = append(errs, Errorf(Join(p.Path, "name"), "must be lower-case letters, digits, '-' or '_', starting with a letter (at most 63)"))
		case seen[p.Name] != "":
			errs = append(errs, Errorf(Join(p.Path, "name"), "%q is already used by %s", p.Name, seen[p.Name]))
		default:
			seen[p.Name] = p.Path
		}
		check(p.Kind != "", Join(p.Path, "kind"), "is required")
	}
	errs = append(errs, c.validateAccess()...)
	errs = append(errs, c.validateStore()...)
	errs = append(errs, c.validateProxy()...)
	return errors.Join(errs...)
}

var hostLabelRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// ValidHostName reports whether s is a DNS host name: dot-separated labels
// of letters, digits and inner hyphens, at most 253 characters.
func ValidHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !hostLabelRE.MatchString(label) {
			return false
		}
	}
	return true
}

func validAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("must be host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return errors.New("port must be a number from 0 to 65535")
	}
	if host != "" && net.ParseIP(host) == nil && !regexp.MustCompile(`^[A-Za-z0-9.-]+$`).MatchString(host) {
		return errors.New("host must be an IP address or a host name")
	}
	return nil
}

// CheckURL checks that s is an absolute http or https URL, as every
// upstream base URL must be.
func CheckURL(s string) error {
	if s == "" {
		return errors.New("is required")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("must be an absolute http or https URL")
	}
	if u.User != nil {
		return errors.New("must not carry credentials: use the secret keys")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return errors.New("must not have a query or fragment: paths are appended to it")
	}
	return nil
}

// Validator is a kind's config struct: Validate checks it, fills its
// defaults and returns FieldErrors named by key.
type Validator interface {
	Validate() error
}

// Load decodes the provider's kind-specific keys into v and validates it.
// Every bad field is named once, with its full path: a field that failed to
// decode is not reported again by validation.
func (p Provider) Load(v Validator) error {
	return dedupe(p.Decode(v), Nest(p.Path, v.Validate()))
}

func dedupe(derr, verr error) error {
	if derr == nil || verr == nil {
		return errors.Join(derr, verr)
	}
	bad := map[string]bool{}
	for _, e := range flatten(derr) {
		if fe, ok := e.(*FieldError); ok {
			bad[fe.Path] = true
		}
	}
	errs := []error{derr}
	for _, e := range flatten(verr) {
		if fe, ok := e.(*FieldError); !ok || !bad[fe.Path] {
			errs = append(errs, e)
		}
	}
	return errors.Join(errs...)
}
