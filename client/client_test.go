package client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tokenvend/tokenvend/client"
	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/demo"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

// fixture is a real tokenvend on loopback, serving the demo's simulated
// upstreams, and a client of it that counts its RPCs.
type fixture struct {
	demo *demo.Demo
	addr string // tokenvend's gRPC address
	rest string // http://host:port of its HTTP port
	c    *client.Client
	rpcs sync.Map // method -> *atomic.Int64
}

func (f *fixture) count(method string) int64 {
	n, ok := f.rpcs.Load("/tokenvend.v1.TokenService/" + method)
	if !ok {
		return 0
	}
	return n.(*atomic.Int64).Load()
}

func (f *fixture) kyc() *kycsim.Server { return f.demo.Simulators["kyc"].(*kycsim.Server) }

// revoke makes the kyc simulator refuse tok. fastapi-users' JWTs are
// deterministic within a second (sub, aud, exp), so the simulator's token
// lifetime changes too: the next login's token is not the revoked one.
func (f *fixture) revoke(tok string) {
	f.kyc().Revoke(tok)
	f.kyc().SetLifetime(2 * time.Hour)
}

func start(t *testing.T, opts ...grpc.DialOption) *fixture {
	t.Helper()
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, d.Config, app.Options{Log: slog.New(slog.DiscardHandler), RetryBase: time.Millisecond})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	f := &fixture{demo: d, addr: a.GRPCAddr(), rest: "http://" + a.HTTPAddr()}
	counter := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		n, _ := f.rpcs.LoadOrStore(method, &atomic.Int64{})
		n.(*atomic.Int64).Add(1)
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUnaryInterceptor(counter)}, opts...)
	if f.c, err = client.New(a.GRPCAddr(), opts...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.c.Close() })
	return f
}

func get(t *testing.T, hc *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestTokenIsKeptAndShared(t *testing.T) {
	t.Parallel()
	f := start(t)
	var wg sync.WaitGroup
	toks := make([]*client.Token, 50)
	for i := range toks {
		wg.Go(func() {
			tok, err := f.c.Token(context.Background(), client.Request{Provider: "kyc"})
			if err != nil {
				t.Error(err)
				return
			}
			toks[i] = tok
		})
	}
	wg.Wait()
	if n := f.count("GetToken"); n != 1 {
		t.Errorf("GetToken RPCs for 50 concurrent Token calls: got %d, want 1", n)
	}
	for _, tok := range toks {
		if tok == nil || tok.AccessToken != toks[0].AccessToken {
			t.Fatal("the 50 callers did not all get the one token")
		}
	}
	// Each caller has its own copy of the headers.
	toks[0].Headers["Authorization"] = "changed"
	again, err := f.c.Token(context.Background(), client.Request{Provider: "kyc"})
	if err != nil {
		t.Fatal(err)
	}
	if again.Headers["Authorization"] != "Bearer "+again.AccessToken {
		t.Errorf("a caller's change to its headers reached another caller: %q", again.Headers["Authorization"])
	}
	if n := f.count("GetToken"); n != 1 {
		t.Errorf("GetToken RPCs after a kept token was asked for again: got %d, want 1", n)
	}
	if again.Expiry.IsZero() || again.SingleUse {
		t.Errorf("token: expiry %v, single use %v; want an expiry and not single-use", again.Expiry, again.SingleUse)
	}
}

func TestTokenIsNotKeptPastItsMargin(t *testing.T) {
	t.Parallel()
	// The demo's kyc tokens live an hour: with a margin of an hour, a kept
	// token is given up at once (its exp is whole seconds, so under an hour).
	f := start(t, client.WithMargin(time.Hour))
	for range 3 {
		if _, err := f.c.Token(context.Background(), client.Request{Provider: "kyc"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.count("GetToken"); n != 3 {
		t.Errorf("GetToken RPCs for 3 calls with a token inside its margin: got %d, want 3", n)
	}
}

func TestTransportRecoversARevokedToken(t *testing.T) {
	t.Parallel()
	f := start(t)
	hc := &http.Client{Transport: f.c.Transport(client.Request{Provider: "kyc"}, nil)}
	for i := range 10 {
		if i == 4 {
			// The upstream revokes the token mid-stream of calls.
			tok, err := f.c.Token(context.Background(), client.Request{Provider: "kyc"})
			if err != nil {
				t.Fatal(err)
			}
			f.revoke(tok.AccessToken)
		}
		if code, body := get(t, hc, f.demo.Upstreams["kyc"]); code != http.StatusOK {
			t.Fatalf("call %d: got %d %s, want 200", i, code, body)
		}
	}
	if n := f.kyc().Logins(); n != 2 {
		t.Errorf("upstream logins: got %d, want 2 (one re-login after the revocation)", n)
	}
	if n := f.count("InvalidateToken"); n != 1 {
		t.Errorf("InvalidateToken RPCs: got %d, want 1", n)
	}
	if n := f.kyc().ResourceCalls(); n != 10 {
		t.Errorf("accepted upstream calls: got %d, want 10", n)
	}
}

// echo is an upstream that accepts a request only with a credential the
// kyc simulator accepts (it asks the simulator's protected endpoint), and
// echoes the body it got.
func echo(t *testing.T, f *fixture) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		check, _ := http.NewRequest(http.MethodGet, f.demo.Upstreams["kyc"], nil)
		check.Header.Set("Authorization", r.Header.Get("Authorization"))
		resp, err := http.DefaultClient.Do(check)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestTransportReplaysABodyOnce(t *testing.T) {
	t.Parallel()
	f := start(t)
	url := echo(t, f)
	tok, err := f.c.Token(context.Background(), client.Request{Provider: "kyc"})
	if err != nil {
		t.Fatal(err)
	}
	f.revoke(tok.AccessToken)

	hc := &http.Client{Transport: f.c.Transport(client.Request{Provider: "kyc"}, nil)}
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("the payload"))
	req.Header.Set("Authorization", "caller's own")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "the payload" {
		t.Errorf("replayed POST: got %d %q, want 200 with the body sent again", resp.StatusCode, body)
	}
	if got := req.Header.Get("Authorization"); got != "caller's own" {
		t.Errorf("the caller's request was modified: Authorization %q", got)
	}
	if n := f.kyc().Logins(); n != 2 {
		t.Errorf("upstream logins: got %d, want 2", n)
	}
}

func TestTransportReturnsTheRefusalWhenTheBodyCannotBeReplayed(t *testing.T) {
	t.Parallel()
	f := start(t)
	url := echo(t, f)
	tok, err := f.c.Token(context.Background(), client.Request{Provider: "kyc"})
	if err != nil {
		t.Fatal(err)
	}
	f.revoke(tok.AccessToken)

	hc := &http.Client{Transport: f.c.Transport(client.Request{Provider: "kyc"}, nil)}
	// A body that can be read once only: no GetBody.
	req, _ := http.NewRequest(http.MethodPost, url, io.NopCloser(strings.NewReader("once")))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("non-replayable POST with a revoked token: got %d, want the upstream's 401", resp.StatusCode)
	}
	if n := f.count("InvalidateToken"); n != 1 {
		t.Errorf("InvalidateToken RPCs: got %d, want 1 (the refusal is still reported)", n)
	}
	// The next request gets the fresh credential.
	req, _ = http.NewRequest(http.MethodPost, url, bytes.NewReader([]byte("next")))
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the request after the report: got %d, want 200", resp.StatusCode)
	}
}

func TestTransportRefusedStatusesOption(t *testing.T) {
	t.Parallel()
	f := start(t)
	var calls atomic.Int64
	forbidden := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusForbidden)
	}))
	t.Cleanup(forbidden.Close)
	for _, tc := range []struct {
		opts  []client.TransportOption
		calls int64
	}{
		{nil, 1}, // 403 is not a refusal by default
		{[]client.TransportOption{client.RefusedStatuses(401, 403)}, 2},
	} {
		calls.Store(0)
		hc := &http.Client{Transport: f.c.Transport(client.Request{Provider: "kyc"}, nil, tc.opts...)}
		if code, _ := get(t, hc, forbidden.URL); code != http.StatusForbidden {
			t.Errorf("got %d, want 403", code)
		}
		if got := calls.Load(); got != tc.calls {
			t.Errorf("upstream calls with options %v: got %d, want %d", tc.opts, got, tc.calls)
		}
	}
}

func TestTransportSingleUseTokens(t *testing.T) {
	t.Parallel()
	f := start(t)
	r := client.Request{Provider: "loginid", Scope: "users.retrieve"}
	hc := &http.Client{Transport: f.c.Transport(r, nil)}
	for i := range 5 {
		// The simulator refuses a token it has seen: each call needs a
		// fresh one.
		if code, body := get(t, hc, f.demo.Upstreams["loginid"]); code != http.StatusOK {
			t.Fatalf("call %d: got %d %s, want 200", i, code, body)
		}
	}
	if n := f.count("GetToken"); n != 5 {
		t.Errorf("GetToken RPCs for 5 single-use calls: got %d, want 5", n)
	}
	tok, err := f.c.Token(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if !tok.SingleUse {
		t.Error("loginid token: SingleUse false, want true")
	}
	ok, err := f.c.Invalidate(context.Background(), r, tok.AccessToken)
	if err != nil || ok {
		t.Errorf("Invalidate of a single-use token: got %v, %v; want false, nil", ok, err)
	}
}

func TestTransportIbaneraOTPPerCall(t *testing.T) {
	t.Parallel()
	f := start(t)
	hc := &http.Client{Transport: f.c.Transport(client.Request{Provider: "ibanera"}, nil)}
	for i := range 3 {
		if code, body := get(t, hc, f.demo.Upstreams["ibanera"]); code != http.StatusOK {
			t.Fatalf("call %d: got %d %s, want 200", i, code, body)
		}
	}
	tok, err := f.c.Token(context.Background(), client.Request{Provider: "ibanera"})
	if err != nil {
		t.Fatal(err)
	}
	if len(tok.Headers["otp"]) != 6 {
		t.Errorf("ibanera headers: otp %q, want a 6-digit code", tok.Headers["otp"])
	}
	// The otp lives one TOTP step: the answer expires with it, so the
	// client keeps it no longer.
	if left := time.Until(tok.Expiry); left > 30*time.Second {
		t.Errorf("ibanera token expires in %s, want within its 30s TOTP step", left)
	}
}

func TestTokenCancellation(t *testing.T) {
	t.Parallel()
	f := start(t)
	f.kyc().SetFault(kycsim.Fault{Hang: true})
	t.Cleanup(func() { f.kyc().SetFault(kycsim.Fault{}) })
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := f.c.Token(ctx, client.Request{Provider: "kyc"})
		errc <- err
	}()
	for f.kyc().LoginAttempts() == 0 {
		time.Sleep(time.Millisecond) // the login must be under way before the cancel
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled Token: got %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Token did not return after its context was cancelled")
	}
}

func TestErrorsKeepTheStatusAndReason(t *testing.T) {
	t.Parallel()
	f := start(t)
	_, err := f.c.Token(context.Background(), client.Request{Provider: "nope"})
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *client.Error", err, err)
	}
	if e.Code != codes.NotFound || e.Reason != "PROVIDER_NOT_FOUND" || e.Provider != "nope" {
		t.Errorf("error: got code %v reason %q provider %q, want NotFound PROVIDER_NOT_FOUND nope", e.Code, e.Reason, e.Provider)
	}
	if st, ok := status.FromError(err); !ok || st.Code() != codes.NotFound {
		t.Errorf("status.FromError: got %v, %v; want NotFound", st, ok)
	}
	if !strings.Contains(err.Error(), "ListProviders") {
		t.Errorf("message %q does not say what to do", err)
	}
}

func TestPerRPCCredentials(t *testing.T) {
	t.Parallel()
	f := start(t)
	creds := f.c.PerRPCCredentials(client.Request{Provider: "kyc"})
	if !creds.RequireTransportSecurity() {
		t.Error("RequireTransportSecurity: got false, want true by default")
	}
	insecureCreds := f.c.PerRPCCredentials(client.Request{Provider: "ibanera"}, client.AllowInsecure())
	if insecureCreds.RequireTransportSecurity() {
		t.Error("RequireTransportSecurity with AllowInsecure: got true, want false")
	}
	md, err := insecureCreds.GetRequestMetadata(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(md["authorization"], "Bearer ") || len(md["otp"]) != 6 {
		t.Errorf("metadata: got %v, want lower-cased authorization and otp", md)
	}
	for k := range md {
		if k != strings.ToLower(k) {
			t.Errorf("metadata key %q is not lower case", k)
		}
	}
	// gRPC itself refuses to send credentials that require transport
	// security over a plaintext connection.
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(creds))
	if err == nil {
		defer conn.Close()
		_, err = tokenvendv1.NewTokenServiceClient(conn).ListProviders(context.Background(), &tokenvendv1.ListProvidersRequest{})
	}
	if err == nil {
		t.Error("a plaintext connection carried credentials that require transport security")
	}
}

// TestInvalidateWinsOverAGetTokenInFlight: a GetToken answered with the
// token being reported, but still on its way back when the report is made,
// must not be kept afterwards.
func TestInvalidateWinsOverAGetTokenInFlight(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var armed atomic.Bool
	var held sync.WaitGroup
	slowReply := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if strings.HasSuffix(method, "/GetToken") && armed.Load() {
			held.Done()
			<-gate
		}
		return err
	}
	f := start(t, grpc.WithChainUnaryInterceptor(slowReply))
	r := client.Request{Provider: "kyc"}
	armed.Store(true)
	held.Add(1)
	first := make(chan *client.Token, 1)
	go func() {
		tok, err := f.c.Token(context.Background(), r)
		if err != nil {
			t.Error(err)
		}
		first <- tok
	}()
	held.Wait() // the answer is back from the server, not yet in the client
	armed.Store(false)
	code, body := get(t, http.DefaultClient, f.rest+"/v1/providers/kyc/token")
	old, _, _ := strings.Cut(strings.TrimPrefix(body, `{"access_token":"`), `"`)
	if code != http.StatusOK || old == "" {
		t.Fatalf("the server's current token: %d %s", code, body)
	}
	f.revoke(old)
	if ok, err := f.c.Invalidate(context.Background(), r, old); err != nil || !ok {
		t.Fatalf("Invalidate: %v, %v; want true", ok, err)
	}
	close(gate)
	if tok := <-first; tok == nil || tok.AccessToken != old {
		t.Fatal("the GetToken in flight did not answer the old token: the test set-up is wrong")
	}
	tok, err := f.c.Token(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == old {
		t.Error("Token after Invalidate: got the reported token, kept from a GetToken that was in flight")
	}
}
