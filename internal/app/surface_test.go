package app_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

// TestRESTAnswersAreNotCached: every /v1/ answer, a token or an error,
// says Cache-Control: no-store and Pragma: no-cache (RFC 6749 §5.1).
func TestRESTAnswersAreNotCached(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	for _, c := range []struct {
		method, path, body string
		status             int
	}{
		{http.MethodGet, "/v1/providers/kyc/token", "", http.StatusOK},
		{http.MethodPost, "/v1/token", `{"provider":"kyc"}`, http.StatusOK},
		{http.MethodGet, "/v1/providers/nope/token", "", http.StatusNotFound},
		{http.MethodGet, "/v1/providers", "", http.StatusOK},
	} {
		resp := do(t, c.method, s.base+c.path, "", c.body)
		if resp.StatusCode != c.status {
			t.Fatalf("%s %s: got %d, want %d", c.method, c.path, resp.StatusCode, c.status)
		}
		if got := resp.Header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("%s %s: Cache-Control %q, want no-store", c.method, c.path, got)
		}
		if got := resp.Header.Get("Pragma"); got != "no-cache" {
			t.Errorf("%s %s: Pragma %q, want no-cache", c.method, c.path, got)
		}
		if c.status == http.StatusOK && strings.HasSuffix(c.path, "token") {
			var tok struct{ Headers map[string]string }
			if err := json.Unmarshal(resp.body, &tok); err != nil {
				t.Fatal(err)
			}
			if got := useHeaders(t, url+kycsim.ResourcePath, tok.Headers); got != http.StatusOK {
				t.Errorf("%s %s: the token upstream: got %d, want 200", c.method, c.path, got)
			}
		}
	}
}

// TestWrongMethodIs405: a method a REST path does not take is 405 Method
// Not Allowed naming, in Allow, the methods it takes (not 501).
func TestWrongMethodIs405(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	for _, c := range []struct {
		path, allow string
		wrong       []string
	}{
		{"/v1/token", "POST", []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions}},
		{"/v1/providers/kyc/token", "GET", []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodHead}},
		{"/v1/providers", "GET", []string{http.MethodPost, http.MethodDelete, http.MethodOptions}},
		{"/v1/to%6Ben", "POST", []string{http.MethodGet}}, // matched unescaped, as the gateway does
		{"/healthz", "GET, HEAD", []string{http.MethodPost}},
	} {
		for _, m := range c.wrong {
			resp := do(t, m, s.base+c.path, "", "")
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != c.allow {
				t.Errorf("%s %s: got %d Allow %q, want 405 Allow %q", m, c.path, resp.StatusCode, resp.Header.Get("Allow"), c.allow)
			}
		}
	}
}

// TestHostCheckWithoutCallers: without callers, the HTTP port answers only
// an IP address, localhost or a name in server.allowed_hosts, so that a
// web page whose name rebinds to 127.0.0.1 cannot read tokens. With
// callers, the Host is not looked at: a token needs an identity.
func TestHostCheckWithoutCallers(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, url := kycSim(t, clk)
	s := startService(t, clk, "  allowed_hosts: [tokenvend.internal.example]\nproviders:"+kycProvider("kyc", url, kycPassword))
	port := s.base[strings.LastIndexByte(s.base, ':'):]
	for _, c := range []struct {
		host   string
		status int
	}{
		{"127.0.0.1" + port, http.StatusOK},
		{"127.0.0.1", http.StatusOK},
		{"[::1]" + port, http.StatusOK},
		{"localhost" + port, http.StatusOK},
		{"LocalHost", http.StatusOK},
		{"tokenvend.internal.example" + port, http.StatusOK},
		{"TokenVend.Internal.Example", http.StatusOK},
		{"evil.example" + port, http.StatusForbidden},
		{"evil.example", http.StatusForbidden},
		{"localhost.evil.example", http.StatusForbidden},
		{"tokenvend.internal.example.evil.example", http.StatusForbidden},
	} {
		for _, path := range []string{"/v1/providers/kyc/token", "/healthz", "/metrics"} {
			resp := do(t, http.MethodGet, s.base+path, c.host, "")
			if resp.StatusCode != c.status {
				t.Errorf("GET %s with Host %s: got %d %.80q, want %d", path, c.host, resp.StatusCode, resp.body, c.status)
				continue
			}
			if c.status == http.StatusForbidden && !bytes.Contains(resp.body, []byte("server.allowed_hosts")) {
				t.Errorf("GET %s with Host %s: got %q, want a message naming server.allowed_hosts", path, c.host, resp.body)
			}
			if c.status == http.StatusOK && strings.HasPrefix(path, "/v1/") {
				var tok struct{ Headers map[string]string }
				if err := json.Unmarshal(resp.body, &tok); err != nil {
					t.Fatal(err)
				}
				if got := useHeaders(t, url+kycsim.ResourcePath, tok.Headers); got != http.StatusOK {
					t.Errorf("Host %s: the token upstream: got %d, want 200", c.host, got)
				}
			}
		}
	}

	withCallers := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword)+"callers: []\n")
	if resp := do(t, http.MethodGet, withCallers.base+"/healthz", "evil.example", ""); resp.StatusCode != http.StatusOK {
		t.Errorf("with callers, Host evil.example: got %d, want 200 (no Host check)", resp.StatusCode)
	}
}

// TestGRPCConnectionLimits reads what the gRPC port tells a raw HTTP/2
// client: at most 1000 concurrent streams, and GOAWAY too_many_pings to a
// client that pings in a flood.
func TestGRPCConnectionLimits(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	conn, err := net.Dial("tcp", s.conn.Target())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var streams uint32
	sawSettings := false
	for pings := 0; ; {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("got %v before a GOAWAY, want GOAWAY too_many_pings", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() || sawSettings {
				continue
			}
			sawSettings = true
			streams, _ = f.Value(http2.SettingMaxConcurrentStreams)
			if err := fr.WriteSettingsAck(); err != nil {
				t.Fatal(err)
			}
			for ; pings < 5; pings++ {
				if err := fr.WritePing(false, [8]byte{byte(pings)}); err != nil {
					t.Fatal(err)
				}
			}
		case *http2.GoAwayFrame:
			if f.ErrCode != http2.ErrCodeEnhanceYourCalm || string(f.DebugData()) != "too_many_pings" {
				t.Errorf("GOAWAY: got %v %q, want ENHANCE_YOUR_CALM too_many_pings", f.ErrCode, f.DebugData())
			}
			if streams != 1000 {
				t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS: got %d, want 1000", streams)
			}
			return
		}
	}
}

// response is an answer with its body read.
type response struct {
	*http.Response
	body []byte
}

// do sends one request, with host as its Host header when set, on a fresh
// connection.
func do(t *testing.T, method, url, host, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp, b}
}
