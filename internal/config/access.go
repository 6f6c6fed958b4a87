package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// TLS is the servers' certificate and, for mutual TLS, the CA that signs
// callers' certificates.
type TLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// ClientCA, when set, is the CA a caller's certificate must be signed
	// by; a certificate's URI SAN (a SPIFFE ID), else its subject CN, then
	// identifies the caller.
	ClientCA string `yaml:"client_ca"`
}

// Enabled reports whether the servers serve TLS.
func (t TLS) Enabled() bool { return t.Cert != "" }

// Caller is one caller allowed to get tokens.
type Caller struct {
	// ID is the caller's certificate identity (URI SAN or CN), or, with
	// APIKeySHA256, a name for a caller that sends an API key.
	ID string `yaml:"id"`
	// APIKeySHA256 is the hex SHA-256 of the key the caller sends as
	// x-api-key.
	APIKeySHA256 string  `yaml:"api_key_sha256"`
	Allow        []Grant `yaml:"allow"`
}

// Grant allows a caller one provider's scopes.
type Grant struct {
	Provider string `yaml:"provider"`
	// Scopes are exact scopes, "*" (any), or a prefix ending in "*"
	// ("users.*"). Absent, only the provider's default scope is allowed.
	Scopes []string `yaml:"scopes"`
	// Subjects are the end users a token may be minted for (a request's
	// subject): exact ("alice@example.com"), "*" (any), or a pattern with
	// one "*" ("*@billing.example.com", "svc-*"). Absent, a request that
	// names a subject is refused. Only for kinds that mint per user.
	Subjects []string `yaml:"subjects"`
}

// LoadTLS builds the servers' TLS configuration: the certificate, and with
// a client CA, verification of any certificate a caller presents. A caller
// without a certificate still connects (health probes, API-key callers);
// one whose certificate is not signed by the CA does not.
func (t TLS) LoadTLS() (*tls.Config, error) {
	f, err := t.read()
	if err != nil {
		return nil, err
	}
	return t.parse(f)
}

// tlsFiles are the contents of the TLS files.
type tlsFiles struct{ cert, key, clientCA []byte }

func (t TLS) read() (f tlsFiles, err error) {
	if f.cert, err = os.ReadFile(t.Cert); err == nil {
		f.key, err = os.ReadFile(t.Key)
	}
	if err != nil {
		return f, Errorf("server.tls.cert", "cannot load the certificate and key: %v", err)
	}
	if t.ClientCA != "" {
		if f.clientCA, err = os.ReadFile(t.ClientCA); err != nil {
			return f, Errorf("server.tls.client_ca", "cannot read: %v", errors.Unwrap(err))
		}
	}
	return f, nil
}

func (t TLS) parse(f tlsFiles) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, Errorf("server.tls.cert", "cannot load the certificate and key: %v", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if t.ClientCA != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(f.clientCA) {
			return nil, Errorf("server.tls.client_ca", "holds no PEM certificate")
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// validateAccess checks TLS and the callers.
func (c *Config) validateAccess() []error {
	var errs []error
	t := c.Server.TLS
	switch {
	case t.Cert != "" && t.Key == "", t.Cert == "" && t.Key != "":
		errs = append(errs, Errorf("server.tls", "cert and key go together"))
	case t.Cert == "" && t.ClientCA != "":
		errs = append(errs, Errorf("server.tls.client_ca", "needs server.tls.cert and key: mutual TLS is TLS first"))
	case t.Enabled():
		if _, err := t.LoadTLS(); err != nil {
			errs = append(errs, err)
		}
	}

	if c.Callers != nil && !t.Enabled() && !c.Server.TLSTerminatedByMesh {
		// Callers send API keys and get tokens: beyond loopback, both
		// would cross the network in the clear.
		for _, addr := range []string{c.Server.GRPCAddr, c.Server.HTTPAddr, c.Server.ProxyAddr} {
			if addr != "" && !loopback(addr) {
				errs = append(errs, Errorf("server.tls", "is required: %s listens beyond loopback, so callers' API keys and the tokens they get would cross the network in the clear; configure server.tls, or set server.tls_terminated_by_mesh: true if a mesh sidecar terminates mutual TLS in front of the ports", addr))
				break
			}
		}
	}

	providers := map[string]bool{}
	for _, p := range c.Providers {
		providers[p.Name] = true
	}
	ids := map[string]string{}
	for i, caller := range c.Callers {
		path := fmt.Sprintf("callers[%d]", i)
		switch {
		case caller.ID == "":
			errs = append(errs, Errorf(Join(path, "id"), "is required"))
		case ids[caller.ID] != "":
			errs = append(errs, Errorf(Join(path, "id"), "%q is already used by %s", caller.ID, ids[caller.ID]))
		default:
			ids[caller.ID] = path
		}
		if caller.APIKeySHA256 != "" {
			if b, err := hex.DecodeString(caller.APIKeySHA256); err != nil || len(b) != 32 {
				errs = append(errs, Errorf(Join(path, "api_key_sha256"), "must be 64 hex digits (the SHA-256 of the key)"))
			}
		} else if t.ClientCA == "" && !c.Server.TLSTerminatedByMesh {
			errs = append(errs, Errorf(Join(path, "id"), "a caller without api_key_sha256 is identified by its certificate, which needs server.tls.client_ca (or server.tls_terminated_by_mesh)"))
		}
		for j, g := range caller.Allow {
			gpath := fmt.Sprintf("%s.allow[%d]", path, j)
			if !providers[g.Provider] {
				errs = append(errs, Errorf(Join(gpath, "provider"), "no provider named %q is configured", g.Provider))
			}
			if g.Scopes != nil && len(g.Scopes) == 0 {
				errs = append(errs, Errorf(Join(gpath, "scopes"), "an empty list grants nothing: leave scopes out for the default scope, or list the scopes"))
			}
			for k, s := range g.Scopes {
				if s == "" || strings.Contains(strings.TrimSuffix(s, "*"), "*") {
					errs = append(errs, Errorf(fmt.Sprintf("%s.scopes[%d]", gpath, k), "must be a scope, \"*\", or a prefix ending in \"*\""))
				}
			}
			errs = append(errs, validateSubjects(Join(gpath, "subjects"), g.Subjects)...)
		}
	}
	return errs
}

// maxSubject is the longest subject a request may name (the broker's
// bound): a longer pattern could never match.
const maxSubject = 256

// validateSubjects checks a grant's subject patterns.
func validateSubjects(path string, subjects []string) []error {
	if subjects != nil && len(subjects) == 0 {
		return []error{Errorf(path, "an empty list allows no subject: leave subjects out to allow none, or list the subjects")}
	}
	var errs []error
	for k, s := range subjects {
		bad := s == "" || len(s) > maxSubject || strings.Count(s, "*") > 1 ||
			strings.ContainsFunc(s, func(c rune) bool { return c < 0x20 || c == 0x7f })
		if bad {
			errs = append(errs, Errorf(fmt.Sprintf("%s[%d]", path, k),
				"must be a subject, \"*\", or a pattern with one \"*\" (\"*@example.com\"), at most %d characters, no control characters", maxSubject))
		}
	}
	return errs
}

// loopback reports whether addr listens on loopback only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
