package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// lifetimeFlag is the demo knob that makes the simulated upstreams issue
// short-lived tokens (and lowers cache.min_valid to match), so a run can
// see a cached token pass its refresh point. Until the demo has it, the
// harness serves a stub upstream of its own instead.
const lifetimeFlag = "token-lifetime"

// demoHasLifetimeKnob reports whether `tokenvend demo` takes --token-lifetime.
func demoHasLifetimeKnob(bin string) bool {
	out, _ := exec.Command(bin, "demo", "-h").CombinedOutput()
	return strings.Contains(string(out), "-"+lifetimeFlag)
}

// expiryResult compares GetToken latency in a window in which the cached
// token passes its refresh point with a window well away from it.
type expiryResult struct {
	how             string // which upstream served the short-lived tokens
	lifetime        time.Duration
	concurrency     int
	outside, across result
	// refreshes are the upstream logins during the across window (the
	// background refresh: 1 expected), waited the lookups in it that were
	// not answered from the cache (0 expected).
	refreshes, waited float64
	// outsideLogins are the logins during the outside windows (0 expected).
	outsideLogins float64
}

// refreshBefore is cache.refresh_before as the expiry run's server has it
// (the default): a token shorter-lived than twice this is refreshed at half
// its life.
const refreshBefore = 5 * time.Minute

// expiry runs GetToken(kyc) at the given concurrency for a window centred
// on the token's refresh point (across), and for two windows away from it
// (outside): right after the login, and right after the across window.
func expiry(ctx context.Context, bin string, lifetime, window, warm time.Duration, concurrency, connections int) (expiryResult, error) {
	res := expiryResult{lifetime: lifetime, concurrency: concurrency}
	var srv *server
	var err error
	if demoHasLifetimeKnob(bin) {
		res.how = "demo --" + lifetimeFlag + " " + lifetime.String()
		srv, err = startServer(bin, "demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--"+lifetimeFlag, lifetime.String())
	} else {
		res.how = "serve --config, kyc stub upstream in the harness (the demo has no --" + lifetimeFlag + " yet)"
		srv, err = serveWithStub(ctx, bin, lifetime)
	}
	if err != nil {
		return res, err
	}
	defer srv.stop()

	conn, err := grpc.NewClient(srv.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return res, err
	}
	defer conn.Close()
	tok, err := tokenvendv1.NewTokenServiceClient(conn).GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: "kyc"})
	if err != nil {
		return res, fmt.Errorf("first GetToken(kyc): %w", err)
	}
	issued, exp := tok.GetIssueTime().AsTime(), tok.GetExpireTime().AsTime()
	refreshAt := exp.Add(-min(refreshBefore, exp.Sub(issued)/2))

	l := grpcLoad(srv.grpcAddr, "tokenvend.v1.TokenService.GetToken", &tokenvendv1.GetTokenRequest{Provider: "kyc"}, connections)
	if _, err := l(ctx, concurrency, warm); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	if time.Until(refreshAt) < window*3/2 || exp.Sub(refreshAt) < window*2 {
		return res, fmt.Errorf("the token (lifetime %s) reaches its refresh point too soon for a %s window outside it: raise -expiry-lifetime", exp.Sub(issued), window)
	}

	// measure runs the load for one window and counts, from /metrics,
	// the upstream logins and the lookups that were not cache hits in it.
	measure := func() (s sample, logins, waited float64, err error) {
		before, err := srv.metrics(ctx)
		if err != nil {
			return s, 0, 0, err
		}
		if s, err = l(ctx, concurrency, window); err != nil {
			return s, 0, 0, err
		}
		after, err := srv.metrics(ctx)
		if err != nil {
			return s, 0, 0, err
		}
		logins = after.sum("tokenvend_logins_total", "provider", "kyc") - before.sum("tokenvend_logins_total", "provider", "kyc")
		waited = after.sum("tokenvend_cache_lookups_total", "provider", "kyc", "result", "!hit") -
			before.sum("tokenvend_cache_lookups_total", "provider", "kyc", "result", "!hit")
		return s, logins, waited, nil
	}
	// Away from the refresh point: a window right after the login and one
	// right after the across window, so that a change in the machine's
	// load during the run falls on both sides.
	var outside sample
	s, logins, _, err := measure()
	if err != nil {
		return res, err
	}
	outside.add(s)
	res.outsideLogins += logins
	select {
	case <-time.After(time.Until(refreshAt.Add(-window / 2))):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	s, res.refreshes, res.waited, err = measure()
	if err != nil {
		return res, err
	}
	res.across = s.result()
	if s, logins, _, err = measure(); err != nil {
		return res, err
	}
	outside.add(s)
	res.outsideLogins += logins
	res.outside = outside.result()
	return res, srv.alive()
}

// serveWithStub runs `tokenvend serve` against a stub of the kyc upstream
// (a fastapi-users JWT login) that issues tokens living lifetime, with
// cache.min_valid low enough that the token is served from the cache
// until well past its refresh point.
func serveWithStub(ctx context.Context, bin string, lifetime time.Duration) (*server, error) {
	stub, err := startStub(ctx, lifetime)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tokenvend-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir) // read at start-up; kyc reads no secret file
	cfg := fmt.Sprintf(`server:
  grpc_addr: "127.0.0.1:0"
  http_addr: "127.0.0.1:0"
cache:
  min_valid: %s
providers:
  - name: kyc
    kind: kyc
    base_url: %q
    username: %q
    password: %q
`, max(lifetime/10, time.Second), stub, stubUser, stubPassword)
	path := filepath.Join(dir, "tokenvend.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return startServer(bin, "serve", "--config", path)
}

const (
	stubUser     = "bench@example.com"
	stubPassword = "bench-password"
)

// startStub serves POST /auth/jwt/login as fastapi-users does (form
// username and password in, {"access_token": JWT, "token_type": "bearer"}
// out, the lifetime only in the JWT's exp) until ctx ends, and returns its
// base URL.
func startStub(ctx context.Context, lifetime time.Duration) (string, error) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	var logins atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /auth/jwt/login", func(w http.ResponseWriter, r *http.Request) {
		if r.FormValue("username") != stubUser || r.FormValue("password") != stubPassword {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"detail":"LOGIN_BAD_CREDENTIALS"}`))
			return
		}
		n := logins.Add(1)
		now := time.Now()
		claims, _ := json.Marshal(map[string]any{
			"sub": fmt.Sprintf("bench-%d", n), "aud": []string{"fastapi-users:auth"},
			"exp": now.Add(lifetime).Unix(),
		})
		enc := base64.RawURLEncoding
		unsigned := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(claims)
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(unsigned))
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"access_token": unsigned + "." + enc.EncodeToString(mac.Sum(nil)),
			"token_type":   "bearer",
		})
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	context.AfterFunc(ctx, func() { _ = hs.Close() })
	return "http://" + ln.Addr().String(), nil
}
