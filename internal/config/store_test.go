package config_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/config"
)

// storeKey is a valid encryption key: 32 bytes, base64.
var storeKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))

func TestStoreAbsentIsMemory(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, providers)
	if cfg.Store.Redis.Enabled() {
		t.Errorf("Store.Redis.Enabled: got true for a config without store, want false")
	}
}

func TestStoreIssueExample(t *testing.T) {
	// t.Setenv: not parallel.
	dir := t.TempDir()
	ca, cert, key := writeCert(t, dir)
	keyFile := filepath.Join(dir, "2026-12")
	if err := os.WriteFile(keyFile, []byte(storeKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))
	t.Setenv("OLD_STORE_KEY", old)
	t.Setenv("REDIS_PASSWORD", canary)
	cfg := mustParse(t, `
store:
  redis:
    addrs: ["redis-0.redis:6379"]
    username: tokenvend
    password: {env: REDIS_PASSWORD}
    tls: {ca: `+ca+`, cert: `+cert+`, key: `+key+`}
    key_prefix: tokenvend
  encryption_keys:
    - {id: "2026-12", key: {file: `+keyFile+`}}
    - {id: "2026-06", key: {env: OLD_STORE_KEY}}
`+providers)
	r := cfg.Store.Redis
	if !r.Enabled() || len(r.Addrs) != 1 || r.Addrs[0] != "redis-0.redis:6379" || r.Username != "tokenvend" || r.Prefix() != "tokenvend" {
		t.Errorf("Store.Redis: got %+v, want the issue's example", r)
	}
	if pw, err := r.Password.Value(); err != nil || pw != canary {
		t.Errorf("Store.Redis.Password: got %v, want the env variable's value", err)
	}
	if _, err := r.TLS.LoadTLS(); err != nil {
		t.Errorf("LoadTLS: got %v, want nil", err)
	}
	ks := cfg.Store.EncryptionKeys
	if len(ks) != 2 || ks[0].ID != "2026-12" || ks[1].ID != "2026-06" {
		t.Fatalf("EncryptionKeys: got %+v, want ids 2026-12, 2026-06 in that order", ks)
	}
	for i, want := range []string{storeKey, old} {
		b, err := ks[i].Bytes()
		if err != nil || base64.StdEncoding.EncodeToString(b) != want {
			t.Errorf("EncryptionKeys[%d].Bytes: got %v, want the configured key", i, err)
		}
	}
}

func TestStoreDefaultPrefix(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, "store:\n  redis: {addrs: [127.0.0.1:6379]}\n  encryption_keys: [{id: a, key: "+storeKey+"}]\n"+providers)
	if got := cfg.Store.Redis.Prefix(); got != "tokenvend" {
		t.Errorf("Prefix: got %q, want tokenvend", got)
	}
}

// TestStoreBadField names each bad field of the store section once, without
// echoing a value.
func TestStoreBadField(t *testing.T) {
	t.Parallel()
	keys := "  encryption_keys: [{id: a, key: " + storeKey + "}]\n"
	redis := "  redis: {addrs: [127.0.0.1:6379]}\n"
	short := base64.StdEncoding.EncodeToString([]byte(canary))
	for _, tc := range []struct{ name, doc, want string }{
		{"unknown store key", "store:\n  redis_addrs: [x:1]\n", "store.redis_addrs: unknown key"},
		{"unknown redis key", "store:\n  redis: {addr: x:1}\n" + keys, "store.redis.addr: unknown key"},
		{"addrs missing", "store:\n  redis: {key_prefix: tv}\n" + keys,
			"store.redis.addrs: is required: one host:port for a standalone Redis, several for a Redis Cluster"},
		{"addr without port", "store:\n  redis: {addrs: [" + canary + "]}\n" + keys, "store.redis.addrs[0]: must be host:port"},
		{"addr port out of range", "store:\n  redis: {addrs: [127.0.0.1:1, 'r:70000']}\n" + keys,
			"store.redis.addrs[1]: port must be a number from 0 to 65535"},
		{"addr port zero", "store:\n  redis: {addrs: ['r:0']}\n" + keys, "store.redis.addrs[0]: must name a host and a port other than 0"},
		{"addr without host", "store:\n  redis: {addrs: [':6379']}\n" + keys, "store.redis.addrs[0]: must name a host and a port other than 0"},
		{"addr twice", "store:\n  redis: {addrs: ['r:1', 'r:2', 'r:1']}\n" + keys,
			`store.redis.addrs[2]: "r:1" is already listed at store.redis.addrs[0]`},
		{"password env unset", "store:\n  redis: {addrs: ['r:1'], password: {env: TOKENVEND_TEST_UNSET_9}}\n" + keys,
			"store.redis.password: environment variable TOKENVEND_TEST_UNSET_9 is not set"},
		{"prefix with a colon", "store:\n  redis: {addrs: ['r:1'], key_prefix: 'a:b'}\n" + keys,
			"store.redis.key_prefix: must be 1 to 64 letters, digits, '_', '.' or '-'"},
		{"prefix with a brace", "store:\n  redis: {addrs: ['r:1'], key_prefix: 'a{b}'}\n" + keys,
			"store.redis.key_prefix: must be 1 to 64 letters, digits, '_', '.' or '-'"},
		{"prefix too long", "store:\n  redis: {addrs: ['r:1'], key_prefix: " + strings.Repeat("p", 65) + "}\n" + keys,
			"store.redis.key_prefix: must be 1 to 64 letters, digits, '_', '.' or '-'"},
		{"tls cert without key", "store:\n  redis: {addrs: ['r:1'], tls: {cert: /c.pem}}\n" + keys, "store.redis.tls: cert and key go together"},
		{"tls ca missing", "store:\n  redis: {addrs: ['r:1'], tls: {ca: /nonexistent/ca.pem}}\n" + keys,
			"store.redis.tls.ca: cannot read: no such file or directory"},
		{"tls cert missing", "store:\n  redis: {addrs: ['r:1'], tls: {cert: /nonexistent/c.pem, key: /nonexistent/k.pem}}\n" + keys,
			"store.redis.tls.cert: cannot load the certificate and key: open /nonexistent/c.pem: no such file or directory"},
		{"keys missing", "store:\n" + redis, "store.encryption_keys: at least one key is required with store.redis: every stored credential is sealed"},
		{"keys without redis", "store:\n" + keys, "store.encryption_keys: are only used with store.redis"},
		{"key id missing", "store:\n" + redis + "  encryption_keys: [{key: " + storeKey + "}]\n", "store.encryption_keys[0].id: is required"},
		{"key id with a space", "store:\n" + redis + "  encryption_keys: [{id: 'a b', key: " + storeKey + "}]\n",
			"store.encryption_keys[0].id: must be 1 to 64 letters, digits, '_', '.' or '-'"},
		{"key id twice", "store:\n" + redis + "  encryption_keys: [{id: a, key: " + storeKey + "}, {id: a, key: " + storeKey + "}]\n",
			`store.encryption_keys[1].id: "a" is already used by store.encryption_keys[0]`},
		{"key missing", "store:\n" + redis + "  encryption_keys: [{id: a}]\n", "store.encryption_keys[0].key: is required"},
		{"key not base64", "store:\n" + redis + "  encryption_keys: [{id: a, key: '" + canary + "!'}]\n",
			"store.encryption_keys[0].key: must be base64 (of 32 random bytes, e.g. `openssl rand -base64 32`)"},
		{"key too short", "store:\n" + redis + "  encryption_keys: [{id: a, key: " + short + "}]\n",
			"store.encryption_keys[0].key: must be 32 bytes after base64 decoding, got 17 (e.g. `openssl rand -base64 32`)"},
		{"key file missing", "store:\n" + redis + "  encryption_keys: [{id: a, key: {file: /nonexistent/k}}]\n",
			"store.encryption_keys[0].key: cannot read secret file /nonexistent/k: no such file or directory"},
		{"keys not a list", "store:\n" + redis + "  encryption_keys: {id: a}\n", "store.encryption_keys: must be a list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Parse([]byte(tc.doc + providers))
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

// writeCert writes a self-signed CA certificate that is also the client's
// certificate, and its key, returning their paths.
func writeCert(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tokenvend"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	for path, b := range map[string]*pem.Block{cert: {Type: "CERTIFICATE", Bytes: der}, key: {Type: "PRIVATE KEY", Bytes: kder}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cert, cert, key
}
