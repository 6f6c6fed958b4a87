package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// Runs 9 and 10 need many keys of one provider. The demo's providers take
// one scope each (or mint per call, which caches nothing), so the harness
// serves a stub of the Insly identifier's client_credentials login itself
// and writes a config with one insly provider that allows every scope it
// asks for: each scope is a key of the provider's cache.
const (
	inslyProvider = "insly"
	stubTenant    = "bench"
	stubClientID  = "bench-client"
	stubSecret    = "bench-client-secret"
	// stubTokenBytes is about the size of a Cognito access token (a
	// signed JWT of ~1 KB), so a cached key holds what a real one would.
	stubTokenBytes = 1024
	// stubLoginDelay is how long the stub takes to answer a login: a
	// real upstream takes longer, and the cold start needs logins that
	// last long enough for callers to pile up on them.
	stubLoginDelay = 20 * time.Millisecond
)

// inslyStub is a running stub of the Insly identifier.
type inslyStub struct {
	url string
	// conns counts the TCP connections tokenvend opened to it.
	conns atomic.Int64
}

// startInslyStub serves POST /token/client/{tenant} as the Insly
// identifier does ({"client_id","client_secret","scope"} in, Cognito's
// authentication_result out) until ctx ends, each answer after delay. A
// wrong tenant or client is refused with the identifier's IDS10017.
func startInslyStub(ctx context.Context, delay time.Duration) (*inslyStub, error) {
	stub := &inslyStub{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token/client/{tenant}", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ClientID     string `json:"client_id"`
			ClientSecret string `json:"client_secret"`
			Scope        string `json:"scope"`
		}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || r.PathValue("tenant") != stubTenant ||
			req.ClientID != stubClientID || req.ClientSecret != stubSecret || req.Scope == "" {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"errors":[{"code":"IDS10017","message":"Not authorized"}]}`))
			return
		}
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		raw := make([]byte, stubTokenBytes*3/4)
		_, _ = rand.Read(raw)
		_ = json.NewEncoder(w).Encode(map[string]any{"authentication_result": map[string]any{
			"access_token": base64.RawURLEncoding.EncodeToString(raw),
			"expires_in":   3600,
			"token_type":   "Bearer",
		}})
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				stub.conns.Add(1)
			}
		}}
	go func() { _ = hs.Serve(ln) }()
	context.AfterFunc(ctx, func() { _ = hs.Close() })
	stub.url = "http://" + ln.Addr().String()
	return stub, nil
}

// benchScopes are n distinct scopes, as an operator would list them.
func benchScopes(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("bench/scope-%05d", i+1)
	}
	return out
}

// inslyConfig is a tokenvend config with one insly client_credentials
// provider on the stub at base, allowing scopes.
func inslyConfig(base string, scopes []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `server:
  grpc_addr: "127.0.0.1:0"
  http_addr: "127.0.0.1:0"
providers:
  - name: %s
    kind: insly
    base_url: %q
    tenant: %q
    grant: client_credentials
    client_id: %q
    client_secret: %q
    scopes:
`, inslyProvider, base, stubTenant, stubClientID, stubSecret)
	for _, s := range scopes {
		fmt.Fprintf(&b, "      - %q\n", s)
	}
	return b.String()
}

// serveInsly runs `tokenvend serve` on inslyConfig, with env added to
// its environment.
func serveInsly(bin, stub string, scopes []string, env ...string) (*server, error) {
	dir, err := os.MkdirTemp("", "tokenvend-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir) // read at start-up; the secret is a literal
	path := filepath.Join(dir, "tokenvend.yaml")
	if err := os.WriteFile(path, []byte(inslyConfig(stub, scopes)), 0o600); err != nil {
		return nil, err
	}
	return startServerEnv(env, bin, "serve", "--config", path)
}
