package redisstore_test

import (
	"bytes"
	"encoding/base64"
	"net"
	"strings"
	"testing"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/store/redisstore"
	"github.com/tokenvend/tokenvend/internal/store/redistest"
	"github.com/tokenvend/tokenvend/internal/token"
	"github.com/tokenvend/tokenvend/internal/token/storetest"
)

// TestFromConfig: the store section, as parsed, gives a working client
// whose keys carry the configured prefix.
func TestFromConfig(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, "--requirepass", "pw-Zq9")
	k := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{3}, 32))
	cfg, err := config.Parse([]byte(`
store:
  redis: {addrs: ["` + srv.Addr + `"], password: pw-Zq9, key_prefix: team.a}
  encryption_keys: [{id: k1, key: ` + k + `}]
providers: [{name: kyc, kind: kyc}]
`))
	if err != nil {
		t.Fatal(err)
	}
	o, err := redisstore.FromConfig(cfg.Store)
	if err != nil {
		t.Fatalf("FromConfig: %v", err)
	}
	if o.Prefix != "team.a" || o.Password != "pw-Zq9" || o.Sealer == nil {
		t.Fatalf("FromConfig: got prefix %q, a password set %v, a sealer %v", o.Prefix, o.Password != "", o.Sealer != nil)
	}
	c, err := redisstore.New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer c.Close()
	s := c.Provider("kyc")
	if err := s.Save(t.Context(), key, token.Stored{Token: storetest.Token("x"), Fence: 1}); err != nil {
		t.Fatal(err)
	}
	out, err := srv.CLI("-a", "pw-Zq9", "--no-auth-warning", "keys", "*")
	if err != nil || !strings.HasPrefix(strings.TrimSpace(out), "{team.a:kyc:") {
		t.Errorf("keys: got %q, %v; want them under {team.a:kyc:", out, err)
	}
}

// TestNewUnreachable: New names the address it could not reach, and
// never the password.
func TestNewUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = redisstore.New(redisstore.Options{Addrs: []string{addr}, Password: "pw-Zq9", Sealer: sealer(t)})
	if err == nil || !strings.Contains(err.Error(), addr) || strings.Contains(err.Error(), "pw-Zq9") {
		t.Errorf("New on a closed port: got %v, want an error naming %s without the password", err, addr)
	}
}
