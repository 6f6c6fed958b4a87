package proxy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/audit"
	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/config"
)

// TestUpstreamFailureLogsNoQuery: an upstream error that carries the
// request's URL (a *url.Error, as an http.Client or a wrapping
// RoundTripper returns) is logged with the provider, method, path and the
// cause, never the caller's query. http.Transport's own errors carry no
// URL, so this is tested on the handler directly.
func TestUpstreamFailureLogsNoQuery(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte("providers:\n  - name: kyc\n    kind: kyc\n    proxy:\n      upstream: \"http://127.0.0.1:1/base\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	p, err := New(cfg.Providers, nil, Options{Policy: auth.New(nil), Log: slog.New(slog.NewJSONHandler(&logs, nil)), Audit: audit.New(&bytes.Buffer{})})
	if err != nil {
		t.Fatal(err)
	}
	c := &call{route: p.routes["kyc"], req: Request{Provider: "kyc"}, path: "/users/me", deadline: time.Now().Add(time.Minute)}
	r := httptest.NewRequest(http.MethodGet, "/kyc/users/me?api_key=query-secret", nil)
	r = r.WithContext(context.WithValue(r.Context(), callKey{}, c))
	cause := errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
	w := httptest.NewRecorder()
	p.upstreamFailed(w, r, &url.Error{Op: "Get", URL: "http://127.0.0.1:1/base/users/me?api_key=query-secret", Err: cause})

	if w.Code != http.StatusBadGateway {
		t.Errorf("got %d, want 502", w.Code)
	}
	line := logs.String()
	if strings.Contains(line, "query-secret") {
		t.Errorf("the log holds the caller's query: %s", line)
	}
	for _, want := range []string{`"provider":"kyc"`, `"method":"GET"`, `"path":"/base/users/me"`, `"op":"Get"`, `"error":"dial tcp 127.0.0.1:1: connect: connection refused"`} {
		if !strings.Contains(line, want) {
			t.Errorf("the log has no %s: %s", want, line)
		}
	}
}
