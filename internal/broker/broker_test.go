package broker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/token"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// fakeSource issues "NAME-N" tokens living lifetime, or fails with err,
// and remembers every request and token.
type fakeSource struct {
	name     string
	now      func() time.Time
	lifetime time.Duration
	err      error
	nilTok   bool

	mu   sync.Mutex
	reqs []token.Request
	toks []*token.Token
}

func (f *fakeSource) Token(_ context.Context, r token.Request) (*token.Token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, r)
	if f.err != nil {
		return nil, f.err
	}
	if f.nilTok {
		return nil, nil
	}
	at := fmt.Sprintf("%s-%d", f.name, len(f.reqs))
	now := f.now()
	tok := &token.Token{
		AccessToken: at, Type: "Bearer",
		Headers:  map[string]string{"Authorization": "Bearer " + at},
		IssuedAt: now, Expiry: now.Add(f.lifetime),
	}
	f.toks = append(f.toks, tok)
	return tok, nil
}

func (f *fakeSource) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

func (f *fakeSource) last() token.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs[len(f.reqs)-1]
}

// fakePerCall adds an "otp" header numbered per call and brings the expiry
// forward to 30s from now, as a TOTP code would.
type fakePerCall struct {
	now func() time.Time
	err error

	mu   sync.Mutex
	seen []*token.Token
}

func (p *fakePerCall) Finish(_ context.Context, t *token.Token) (*token.Token, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen = append(p.seen, t)
	if p.err != nil {
		return nil, p.err
	}
	out := t.WithHeaders(map[string]string{"otp": fmt.Sprintf("%06d", len(p.seen))})
	if exp := p.now().Add(30 * time.Second); exp.Before(out.Expiry) {
		out.Expiry = exp
	}
	return out, nil
}

func options(clk *clocktest.Clock) token.Options {
	return token.Options{
		RefreshBefore: time.Minute, MinValid: 10 * time.Second,
		RetryBase: time.Millisecond, Now: clk.Now,
	}
}

// fixture is a broker over one provider of each scope shape, each with its
// own source issuing 48-hour tokens.
func fixture(t *testing.T) (*broker.Broker, map[string]*fakeSource) {
	t.Helper()
	clk := clocktest.New(t0)
	srcs := map[string]*fakeSource{}
	src := func(name string) *fakeSource {
		s := &fakeSource{name: name, now: clk.Now, lifetime: 48 * time.Hour}
		srcs[name] = s
		return s
	}
	b := broker.New([]broker.Provider{
		{Name: "plain", Kind: "kyc", Source: src("plain")},
		{Name: "scoped", Kind: "insly", Source: src("scoped"), Scopes: broker.Scopes{Allowed: []string{"read", "write"}, Default: "read"}},
		{Name: "required", Kind: "identityx", Source: src("required"), Scopes: broker.Scopes{Allowed: []string{"a", "b"}}},
		{Name: "defaultonly", Kind: "kyc", Source: src("defaultonly"), Scopes: broker.Scopes{Default: "d"}},
		{Name: "minter", Kind: "loginid", Source: src("minter"), Subject: true, SingleUse: true},
	}, options(clk), nil)
	return b, srcs
}

func TestTokenChecks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		req  broker.Request
		// On success, the request the provider's source must see.
		wantScope, wantSubject string
		// On failure, the error.
		wantKind   token.Kind
		wantReason string
		wantMsg    string
	}{
		{name: "no-scope provider without a scope", req: broker.Request{Provider: "plain"}},
		{name: "default scope applied", req: broker.Request{Provider: "scoped"}, wantScope: "read"},
		{name: "default scope named", req: broker.Request{Provider: "scoped", Scope: "read"}, wantScope: "read"},
		{name: "allowed scope", req: broker.Request{Provider: "scoped", Scope: "write"}, wantScope: "write"},
		{name: "default-only provider applies its default", req: broker.Request{Provider: "defaultonly"}, wantScope: "d"},
		{name: "required scope given", req: broker.Request{Provider: "required", Scope: "b"}, wantScope: "b"},
		{name: "subject for a provider that takes one", req: broker.Request{Provider: "minter", Subject: "alice@example.com"}, wantSubject: "alice@example.com"},
		{name: "min_valid_for at its 24h bound", req: broker.Request{Provider: "plain", MinValidFor: 24 * time.Hour}},

		{name: "empty provider", req: broker.Request{},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidProvider, wantMsg: "provider is required"},
		{name: "provider with a space", req: broker.Request{Provider: "pla in"},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidProvider, wantMsg: "malformed"},
		{name: "provider with a non-ASCII letter", req: broker.Request{Provider: "plaïn"},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidProvider, wantMsg: "malformed"},
		{name: "provider of 64 characters", req: broker.Request{Provider: strings.Repeat("p", 64)},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidProvider, wantMsg: "at most 63"},
		{name: "provider of 63 characters is well-formed but unknown", req: broker.Request{Provider: strings.Repeat("p", 63)},
			wantKind: token.KindNotFound, wantReason: broker.ReasonProviderNotFound},
		{name: "unknown provider", req: broker.Request{Provider: "nope"},
			wantKind: token.KindNotFound, wantReason: broker.ReasonProviderNotFound, wantMsg: `"nope"`},
		{name: "scope on a no-scope provider", req: broker.Request{Provider: "plain", Scope: "read"},
			wantKind: token.KindDenied, wantReason: broker.ReasonScopeNotAllowed, wantMsg: "takes no scope"},
		{name: "scope not allowed", req: broker.Request{Provider: "scoped", Scope: "admin"},
			wantKind: token.KindDenied, wantReason: broker.ReasonScopeNotAllowed, wantMsg: "allowed: read, write"},
		{name: "scope other than a default-only provider's", req: broker.Request{Provider: "defaultonly", Scope: "e"},
			wantKind: token.KindDenied, wantReason: broker.ReasonScopeNotAllowed, wantMsg: "allowed: d"},
		{name: "required scope missing", req: broker.Request{Provider: "required"},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidScope, wantMsg: "needs a scope: one of a, b"},
		{name: "scope with a space", req: broker.Request{Provider: "scoped", Scope: "read write"},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidScope},
		{name: "scope of 257 characters", req: broker.Request{Provider: "scoped", Scope: strings.Repeat("s", 257)},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidScope},
		{name: "subject for a provider that takes none", req: broker.Request{Provider: "plain", Subject: "alice"},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidSubject, wantMsg: "leave subject empty"},
		{name: "subject with a control character", req: broker.Request{Provider: "minter", Subject: "ali\nce"},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidSubject},
		{name: "subject of 257 characters", req: broker.Request{Provider: "minter", Subject: strings.Repeat("u", 257)},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidSubject},
		{name: "negative min_valid_for", req: broker.Request{Provider: "plain", MinValidFor: -time.Second},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidMinValid},
		{name: "min_valid_for over 24h", req: broker.Request{Provider: "plain", MinValidFor: 24*time.Hour + time.Second},
			wantKind: token.KindInvalid, wantReason: broker.ReasonInvalidMinValid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, srcs := fixture(t)
			a, err := b.Token(context.Background(), tc.req)
			if tc.wantReason == "" {
				if err != nil {
					t.Fatalf("Token(%+v): %v", tc.req, err)
				}
				src := srcs[tc.req.Provider]
				if got := src.calls(); got != 1 {
					t.Fatalf("source calls: got %d, want 1", got)
				}
				if r := src.last(); r.Scope != tc.wantScope || r.Subject != tc.wantSubject {
					t.Errorf("source request: got scope %q subject %q, want %q %q", r.Scope, r.Subject, tc.wantScope, tc.wantSubject)
				}
				if a.Token == nil || !strings.HasPrefix(a.Token.AccessToken, tc.req.Provider+"-") {
					t.Errorf("answer token: got %+v, want one from %s", a.Token, tc.req.Provider)
				}
				return
			}
			var e *token.Error
			if !errors.As(err, &e) {
				t.Fatalf("got error %v (%T), want a *token.Error", err, err)
			}
			if e.Kind != tc.wantKind || e.Reason != tc.wantReason {
				t.Errorf("got kind %v reason %q, want %v %q (%s)", e.Kind, e.Reason, tc.wantKind, tc.wantReason, e.Message)
			}
			if !strings.Contains(e.Message, tc.wantMsg) {
				t.Errorf("message %q does not contain %q", e.Message, tc.wantMsg)
			}
			if a.Token != nil {
				t.Errorf("got a token with an error")
			}
			for name, src := range srcs {
				if n := src.calls(); n != 0 {
					t.Errorf("source %s called %d times for a refused request", name, n)
				}
			}
		})
	}
}

func TestSingleUseAndCached(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		singleUse bool
		wantCalls int
	}{
		{"single-use asks the source every time", true, 100},
		{"cacheable asks the source once", false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := clocktest.New(t0)
			src := &fakeSource{name: "p", now: clk.Now, lifetime: 5 * time.Minute}
			b := broker.New([]broker.Provider{{Name: "p", Kind: "k", Source: src, SingleUse: tc.singleUse}}, options(clk), nil)
			seen := map[string]bool{}
			for i := range 100 {
				a, err := b.Token(context.Background(), broker.Request{Provider: "p"})
				if err != nil {
					t.Fatalf("call %d: %v", i+1, err)
				}
				if a.SingleUse != tc.singleUse {
					t.Errorf("call %d: SingleUse %v, want %v", i+1, a.SingleUse, tc.singleUse)
				}
				if want := !tc.singleUse && i > 0; a.Outcome.Hit != want {
					t.Errorf("call %d: Hit %v, want %v", i+1, a.Outcome.Hit, want)
				}
				seen[a.Token.AccessToken] = true
			}
			if got := src.calls(); got != tc.wantCalls {
				t.Errorf("source calls for 100 requests: got %d, want %d", got, tc.wantCalls)
			}
			if got := len(seen); got != tc.wantCalls {
				t.Errorf("distinct tokens: got %d, want %d", got, tc.wantCalls)
			}
		})
	}

	t.Run("single-use failures reach the caller", func(t *testing.T) {
		t.Parallel()
		clk := clocktest.New(t0)
		rejected := token.Rejected(token.ReasonCredentialsRejected, "BAD_KEY", "the key was refused")
		for _, src := range []*fakeSource{
			{name: "err", now: clk.Now, err: rejected},
			{name: "nil", now: clk.Now, nilTok: true},
		} {
			b := broker.New([]broker.Provider{{Name: "p", Kind: "k", Source: src, SingleUse: true}}, options(clk), nil)
			a, err := b.Token(context.Background(), broker.Request{Provider: "p"})
			if err == nil || a.Token != nil {
				t.Errorf("%s source: got %+v, %v; want no token and an error", src.name, a.Token, err)
			}
			if src.err != nil && !errors.Is(err, src.err) {
				t.Errorf("%s source: got %v, want the source's error", src.name, err)
			}
		}
	})
}

func TestPerCall(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		singleUse bool
		wantCalls int
	}{
		{"after the cache", false, 1},
		{"after a single-use source", true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := clocktest.New(t0)
			src := &fakeSource{name: "p", now: clk.Now, lifetime: time.Hour}
			pc := &fakePerCall{now: clk.Now}
			b := broker.New([]broker.Provider{{Name: "p", Kind: "ibanera", Source: src, SingleUse: tc.singleUse, PerCall: pc}}, options(clk), nil)
			for i := range 3 {
				a, err := b.Token(context.Background(), broker.Request{Provider: "p"})
				if err != nil {
					t.Fatalf("call %d: %v", i+1, err)
				}
				if got, want := a.Token.Headers["otp"], fmt.Sprintf("%06d", i+1); got != want {
					t.Errorf("call %d: otp header %q, want %q (fresh per call)", i+1, got, want)
				}
				if got, want := a.Token.Headers["Authorization"], "Bearer "+a.Token.AccessToken; got != want {
					t.Errorf("call %d: Authorization %q, want %q", i+1, got, want)
				}
				if got, want := a.Token.Expiry, t0.Add(30*time.Second); !got.Equal(want) {
					t.Errorf("call %d: expiry %s, want the per-call part's %s", i+1, got, want)
				}
			}
			if got := src.calls(); got != tc.wantCalls {
				t.Errorf("source calls: got %d, want %d", got, tc.wantCalls)
			}
			// Finish was given the source's own tokens, which it did not
			// alter: the cached one still has no otp and its own expiry.
			for i, in := range pc.seen {
				want := src.toks[min(i, len(src.toks)-1)]
				if in != want {
					t.Errorf("Finish %d got %q, want the source's token %q", i+1, in.AccessToken, want.AccessToken)
				}
			}
			for _, tok := range src.toks {
				if _, ok := tok.Headers["otp"]; ok || !tok.Expiry.Equal(t0.Add(time.Hour)) {
					t.Errorf("source token %q altered: headers %v, expiry %s", tok.AccessToken, tok.Headers, tok.Expiry)
				}
			}
		})
	}

	t.Run("a Finish error reaches the caller", func(t *testing.T) {
		t.Parallel()
		clk := clocktest.New(t0)
		boom := errors.New("no otp secret")
		b := broker.New([]broker.Provider{{Name: "p", Kind: "k",
			Source: &fakeSource{name: "p", now: clk.Now, lifetime: time.Hour}, PerCall: &fakePerCall{now: clk.Now, err: boom}}}, options(clk), nil)
		if _, err := b.Token(context.Background(), broker.Request{Provider: "p"}); !errors.Is(err, boom) {
			t.Errorf("got %v, want %v", err, boom)
		}
	})

	t.Run("a failed login is not finished", func(t *testing.T) {
		t.Parallel()
		clk := clocktest.New(t0)
		pc := &fakePerCall{now: clk.Now}
		src := &fakeSource{name: "p", now: clk.Now, err: token.Rejected(token.ReasonCredentialsRejected, "", "refused")}
		b := broker.New([]broker.Provider{{Name: "p", Kind: "k", Source: src, PerCall: pc}}, options(clk), nil)
		if _, err := b.Token(context.Background(), broker.Request{Provider: "p"}); token.KindOf(err) != token.KindRejected {
			t.Errorf("got %v, want KindRejected", err)
		}
		if len(pc.seen) != 0 {
			t.Errorf("Finish called %d times after a failed login, want 0", len(pc.seen))
		}
	})
}

func TestProviders(t *testing.T) {
	t.Parallel()
	clk := clocktest.New(t0)
	src := func(name string) *fakeSource {
		return &fakeSource{name: name, now: clk.Now, lifetime: time.Hour}
	}
	bad := src("bad")
	bad.err = token.Rejected(token.ReasonCredentialsRejected, "LOGIN_BAD_CREDENTIALS", "refused")
	held := make(chan string, 10)
	b := broker.New([]broker.Provider{
		{Name: "zeta", Kind: "kyc", Source: src("zeta")},
		{Name: "scoped", Kind: "insly", Source: src("scoped"), Scopes: broker.Scopes{Allowed: []string{"r", "w", "x"}, Default: "w"}},
		{Name: "extra", Kind: "insly", Source: src("extra"), Scopes: broker.Scopes{Allowed: []string{"r"}, Default: "d"}},
		{Name: "minter", Kind: "loginid", Source: src("minter"), SingleUse: true},
		{Name: "bad", Kind: "kyc", Source: bad},
	}, options(clk), func(provider string, h bool) { held <- fmt.Sprintf("%s %v", provider, h) })

	type info struct {
		name, kind    string
		scopes        []string
		def           string
		valid, isHeld bool
	}
	check := func(step string, want []info) {
		t.Helper()
		got := b.Providers()
		if len(got) != len(want) {
			t.Fatalf("%s: got %d providers, want %d", step, len(got), len(want))
		}
		for i, w := range want {
			g := got[i]
			if g.Name != w.name || g.Kind != w.kind || !slices.Equal(g.Scopes, w.scopes) || g.DefaultScope != w.def || g.Valid != w.valid || (g.Held != nil) != w.isHeld {
				t.Errorf("%s: provider %d: got %s %s scopes %q default %q valid %v held %v, want %s %s %q %q %v %v",
					step, i, g.Name, g.Kind, g.Scopes, g.DefaultScope, g.Valid, g.Held != nil, w.name, w.kind, w.scopes, w.def, w.valid, w.isHeld)
			}
		}
	}
	want := []info{
		{"zeta", "kyc", nil, "", false, false},
		{"scoped", "insly", []string{"w", "r", "x"}, "w", false, false},
		{"extra", "insly", []string{"d", "r"}, "d", false, false},
		{"minter", "loginid", nil, "", false, false},
		{"bad", "kyc", nil, "", false, false},
	}
	check("before any request", want)

	ctx := context.Background()
	for _, r := range []broker.Request{{Provider: "scoped", Scope: "x"}, {Provider: "minter"}} {
		if _, err := b.Token(ctx, r); err != nil {
			t.Fatalf("Token(%+v): %v", r, err)
		}
	}
	if _, err := b.Token(ctx, broker.Request{Provider: "bad"}); token.KindOf(err) != token.KindRejected {
		t.Fatalf("bad provider: got %v, want KindRejected", err)
	}
	want[1].valid = true // a single-use provider never holds a credential
	want[4].isHeld = true
	check("after requests", want)
	select {
	case got := <-held:
		if got != "bad true" {
			t.Errorf("onHold: got %q, want %q", got, "bad true")
		}
	case <-time.After(5 * time.Second):
		t.Error("onHold was not told that bad's logins are held")
	}

	clk.Advance(time.Hour)
	want[1].valid = false
	want[4].isHeld = false
	check("after the tokens expire and the hold ends", want)
}

// TestShown: what a log, a span or an error detail may show of a request
// is bounded whatever was sent, and valid fields are shown as sent.
func TestShown(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("p", 60<<10)
	for _, tc := range []struct {
		name     string
		in, want broker.Request
	}{
		{"valid", broker.Request{Provider: "kyc", Scope: "users.*", Subject: "Ålice Smith"}, broker.Request{Provider: "kyc", Scope: "users.*", Subject: "Ålice Smith"}},
		{"huge", broker.Request{Provider: huge, Scope: huge, Subject: huge}, broker.Request{
			Provider: strings.Repeat("p", 32) + "...[61440 bytes]", Scope: strings.Repeat("p", 32) + "...[61440 bytes]", Subject: strings.Repeat("p", 32) + "...[61440 bytes]"}},
		{"control characters", broker.Request{Provider: "a b\n", Scope: "x\x00", Subject: "a\x1b[31m"}, broker.Request{Provider: "a?b?", Scope: "x?", Subject: "a?[31m"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := broker.Shown(tc.in); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if err := broker.Validate(tc.in); (err == nil) != (tc.name == "valid") {
				t.Errorf("Validate: got %v", err)
			}
		})
	}
}

// TestMintFailureIsLogged: the cause of a single-use source's failure,
// which no cache logs and the caller is not told, reaches the log.
func TestMintFailureIsLogged(t *testing.T) {
	t.Parallel()
	var buf strings.Builder
	o := token.Options{Log: slog.New(slog.NewTextHandler(&buf, nil))}
	src := &fakeSource{name: "p", now: time.Now, err: token.SecretUnreadable("private_key", errors.New("cannot read secret file /run/secrets/key"))}
	b := broker.New([]broker.Provider{{Name: "p", Kind: "k", Source: src, SingleUse: true}}, o, nil)
	_, err := b.Token(context.Background(), broker.Request{Provider: "p"})
	var e *token.Error
	if !errors.As(err, &e) || strings.Contains(e.Message, "/run/secrets") {
		t.Fatalf("got %v, want a rejection whose message does not name the file", err)
	}
	if !strings.Contains(buf.String(), "mint failed") || !strings.Contains(buf.String(), "/run/secrets/key") {
		t.Errorf("log: got %q, want the cause", buf.String())
	}
}

// TestManyScopes: a provider listing thousands of scopes answers each at
// once, and a refusal lists a bounded number of them, not all.
func TestManyScopes(t *testing.T) {
	t.Parallel()
	scopes := make([]string, 10000)
	for i := range scopes {
		scopes[i] = fmt.Sprintf("scope-%05d", i)
	}
	src := &fakeSource{name: "p", now: time.Now, lifetime: time.Hour}
	b := broker.New([]broker.Provider{{Name: "p", Kind: "fake", Source: src, Scopes: broker.Scopes{Allowed: scopes}}},
		token.Options{}, nil)
	if _, err := b.Token(context.Background(), broker.Request{Provider: "p", Scope: scopes[9999]}); err != nil {
		t.Fatalf("the last of 10,000 scopes: %v", err)
	}
	for _, r := range []broker.Request{{Provider: "p", Scope: "nope"}, {Provider: "p"}} {
		_, err := b.Token(context.Background(), r)
		var e *token.Error
		if !errors.As(err, &e) {
			t.Fatalf("%+v: got %v, want a refusal", r, err)
		}
		if len(e.Message) > 1000 || !strings.Contains(e.Message, "and 9980 more") {
			t.Errorf("%+v: message of %d bytes (%.80s...), want at most 1000 naming how many more", r, len(e.Message), e.Message)
		}
	}
}
