package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/tokenvend/tokenvend/internal/secret"
)

// Store says where the state that replicas share lives. Absent, it lives
// in the process's memory: one replica, as for the demo and `make run`.
type Store struct {
	// Redis, when its addrs are set, keeps tokens, leases and login
	// budgets in Redis (7 or newer) or Valkey (7.2 or newer), so that
	// every replica acts as one broker.
	Redis Redis `yaml:"redis"`
	// EncryptionKeys seal every stored credential (required with redis):
	// the first seals, all of them open, so a key can be rotated without
	// losing the tokens sealed by the one before.
	EncryptionKeys []EncryptionKey `yaml:"encryption_keys"`
}

// Redis is how to reach the Redis deployment.
type Redis struct {
	// Addrs are host:port addresses: one is a standalone primary,
	// several are seeds of a Redis Cluster.
	Addrs []string `yaml:"addrs"`
	// Username and Password authenticate (ACL); both optional.
	Username string        `yaml:"username"`
	Password secret.Secret `yaml:"password"`
	// TLS, when set, makes the connection TLS.
	TLS RedisTLS `yaml:"tls"`
	// KeyPrefix starts every key, so deployments can share a server.
	KeyPrefix string `yaml:"key_prefix"`
}

// RedisTLS is the client side of TLS to Redis: the CA that signs the
// server's certificate (the system's roots when empty) and, for mutual
// TLS, the client's certificate and key.
type RedisTLS struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// EncryptionKey is one AES-256 key of the store, by its id.
type EncryptionKey struct {
	// ID names the key in every value it seals, so a value is opened by
	// the key that sealed it.
	ID string `yaml:"id"`
	// Key is 32 random bytes, base64-encoded.
	Key secret.Secret `yaml:"key"`
}

// DefaultKeyPrefix is the key prefix when key_prefix is not set.
const DefaultKeyPrefix = "tokenvend"

// Enabled reports whether the redis store is configured: any of its keys
// set. Its addrs are then required.
func (r Redis) Enabled() bool {
	return len(r.Addrs) > 0 || r.Username != "" || !r.Password.IsZero() || r.TLS.Enabled() || r.KeyPrefix != ""
}

// Enabled reports whether TLS to Redis is configured.
func (t RedisTLS) Enabled() bool { return t.CA != "" || t.Cert != "" || t.Key != "" }

// Prefix is the key prefix, the default when none is set.
func (r Redis) Prefix() string {
	if r.KeyPrefix == "" {
		return DefaultKeyPrefix
	}
	return r.KeyPrefix
}

// Bytes resolves and decodes the key: exactly 32 bytes.
func (k EncryptionKey) Bytes() ([]byte, error) {
	v, err := k.Key.Value()
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
	if err != nil {
		return nil, errors.New("must be base64 (of 32 random bytes, e.g. `openssl rand -base64 32`)")
	}
	if len(b) != 32 {
		return nil, fmt.Errorf("must be 32 bytes after base64 decoding, got %d (e.g. `openssl rand -base64 32`)", len(b))
	}
	return b, nil
}

// LoadTLS builds the client TLS configuration for Redis.
func (t RedisTLS) LoadTLS() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, Errorf("store.redis.tls.ca", "cannot read: %v", errors.Unwrap(err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, Errorf("store.redis.tls.ca", "holds no PEM certificate")
		}
		cfg.RootCAs = pool
	}
	if t.Cert != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, Errorf("store.redis.tls.cert", "cannot load the certificate and key: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

var (
	keyPrefixRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	keyIDRE     = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
)

// validateStore checks the store section without connecting to anything:
// the addresses' form, the TLS files, and every encryption key's length.
func (c *Config) validateStore() []error {
	var errs []error
	s := c.Store
	r := s.Redis
	if !r.Enabled() {
		if len(s.EncryptionKeys) > 0 {
			errs = append(errs, Errorf("store.encryption_keys", "are only used with store.redis"))
		}
		return errs
	}
	if len(r.Addrs) == 0 {
		errs = append(errs, Errorf("store.redis.addrs", "is required: one host:port for a standalone Redis, several for a Redis Cluster"))
	}
	seen := map[string]int{}
	for i, a := range r.Addrs {
		path := fmt.Sprintf("store.redis.addrs[%d]", i)
		switch err := validAddr(a); {
		case err != nil:
			errs = append(errs, Errorf(path, "%v", err))
		case strings.HasSuffix(a, ":0") || strings.HasPrefix(a, ":"):
			errs = append(errs, Errorf(path, "must name a host and a port other than 0"))
		case seen[a] > 0:
			errs = append(errs, Errorf(path, "%q is already listed at store.redis.addrs[%d]", a, seen[a]-1))
		default:
			seen[a] = i + 1
		}
	}
	if !r.Password.IsZero() {
		if _, err := r.Password.Value(); err != nil {
			errs = append(errs, Errorf("store.redis.password", "%v", err))
		}
	}
	if r.KeyPrefix != "" && !keyPrefixRE.MatchString(r.KeyPrefix) {
		errs = append(errs, Errorf("store.redis.key_prefix", "must be 1 to 64 letters, digits, '_', '.' or '-'"))
	}
	t := r.TLS
	switch {
	case (t.Cert == "") != (t.Key == ""):
		errs = append(errs, Errorf("store.redis.tls", "cert and key go together"))
	case t.Enabled():
		if _, err := t.LoadTLS(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(s.EncryptionKeys) == 0 {
		errs = append(errs, Errorf("store.encryption_keys", "at least one key is required with store.redis: every stored credential is sealed"))
	}
	ids := map[string]int{}
	for i, k := range s.EncryptionKeys {
		path := fmt.Sprintf("store.encryption_keys[%d]", i)
		switch {
		case k.ID == "":
			errs = append(errs, Errorf(Join(path, "id"), "is required"))
		case !keyIDRE.MatchString(k.ID):
			errs = append(errs, Errorf(Join(path, "id"), "must be 1 to 64 letters, digits, '_', '.' or '-'"))
		case ids[k.ID] > 0:
			errs = append(errs, Errorf(Join(path, "id"), "%q is already used by store.encryption_keys[%d]", k.ID, ids[k.ID]-1))
		default:
			ids[k.ID] = i + 1
		}
		if k.Key.IsZero() {
			errs = append(errs, Errorf(Join(path, "key"), "is required"))
		} else if _, err := k.Bytes(); err != nil {
			errs = append(errs, Errorf(Join(path, "key"), "%v", err))
		}
	}
	return errs
}
