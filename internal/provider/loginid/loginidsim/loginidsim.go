// Package loginidsim simulates the part of LoginID's management API that
// checks API service tokens: short ES256 JWTs that the caller's backend signs
// with the private half of an API credential and sends as
// "Authorization: Bearer <token>", one fresh token per request.
//
// The simulator is strict on purpose. It verifies every token by hand with
// the standard library, independently of any JWT library a client might use,
// so that a client bug cannot be hidden by a verifier sharing the same code:
//
//   - the compact JWS must be three unpadded base64url segments;
//   - the header must be exactly {"alg":"ES256","typ":"JWT"}: "none", HS256
//     (with the public key as the HMAC secret), RS256, a kid or any other
//     member are refused;
//   - the signature must be the 64-byte r||s form of JWS, not ASN.1 DER, and
//     must verify against the configured P-256 public key over SHA-256 of
//     "header.payload";
//   - the payload must carry a non-empty string nonce, an integer iat no older
//     than MaxAge and no further in the future than Skew, the scope claim
//     ("type" by default, or "scope"), and client_id when one is configured;
//   - a nonce is accepted once: the API refuses a token it has already seen.
//
// Each endpoint in a small table requires one scope; a token for another
// scope is answered 403. Token failures are answered 401. Both carry a
// {"code","message"} JSON body, as LoginID's management API does.
package loginidsim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// Defaults applied to zero-valued Options fields.
const (
	// DefaultScopeClaim is the claim LoginID's server SDKs put the scope in.
	DefaultScopeClaim = "type"
	// DefaultMaxAge is how long after its iat a token is accepted.
	DefaultMaxAge = 5 * time.Minute
	// DefaultSkew is how far in the future an iat may be, for clock drift
	// between the signer and the API.
	DefaultSkew = 30 * time.Second
)

// Error codes in the "code" member of a rejection body. Each failure has its
// own code so that tests can tell them apart; the HTTP status is what a
// client is expected to act on.
const (
	CodeUnauthorized     = "unauthorized"        // 401: no bearer token in the request
	CodeInvalidToken     = "invalid_token"       // 401: not a well-formed ES256 JWT, or a claim is malformed
	CodeInvalidSignature = "invalid_signature"   // 401: the signature does not verify with the public key
	CodeInvalidClient    = "invalid_client"      // 401: client_id is missing or not the configured one
	CodeTokenExpired     = "token_expired"       // 401: iat older than MaxAge, or exp passed
	CodeTokenNotYetValid = "token_not_yet_valid" // 401: iat further in the future than Skew
	CodeTokenReplayed    = "token_replayed"      // 401: the nonce was already used
	CodeForbidden        = "forbidden"           // 403: the scope claim is not the endpoint's scope
	CodeNotFound         = "not_found"           // 404: no such endpoint
	CodeMethodNotAllowed = "method_not_allowed"  // 405: the path exists with other methods
)

// Endpoint is one row of the simulator's endpoint table: a request whose
// method and path match needs a token whose scope claim equals Scope.
type Endpoint struct {
	// Method is the HTTP method, e.g. "POST".
	Method string
	// Pattern is the path relative to the server root. A segment written
	// "{name}" matches any one non-empty segment; every other segment must
	// match exactly. A trailing slash is not ignored.
	Pattern string
	// Scope is the value the token's scope claim must have.
	Scope string
}

// DefaultEndpoints returns the endpoint table used when Options.Endpoints is
// nil: LoginID's management operations and the scope each requires.
func DefaultEndpoints() []Endpoint {
	return []Endpoint{
		{"POST", "/manage/users", "users.create"},
		{"GET", "/manage/users/{id}", "users.retrieve"},
		{"DELETE", "/manage/users/{id}", "users.delete"},
		{"PUT", "/manage/users/{id}/activate", "users.activate"},
		{"PUT", "/manage/users/{id}/deactivate", "users.deactivate"},
		{"GET", "/manage/users/{id}/credentials", "credentials.list"},
		{"POST", "/manage/users/{id}/credentials", "credentials.add"},
		{"POST", "/manage/users/{id}/credentials/force", "credentials.force"},
		{"PUT", "/manage/users/{id}/credentials/{credential}/rename", "credentials.rename"},
		{"DELETE", "/manage/users/{id}/credentials/{credential}", "credentials.revoke"},
		{"POST", "/codes/generate", "codes.generate"},
		{"POST", "/codes/authorize", "codes.authorize"},
		{"POST", "/codes/invalidate", "codes.invalidate"},
		{"POST", "/tx", "tx.create"},
		{"POST", "/auth/register", "auth.register"},
		{"POST", "/auth/login", "auth.login"},
	}
}

// Options configures a Server. Zero values give the documented defaults.
type Options struct {
	// PublicKey is the public half of the configured API credential. It is
	// required and must be a P-256 key; New panics otherwise.
	PublicKey *ecdsa.PublicKey
	// ClientID, when set, must equal the token's client_id claim. When
	// empty, client_id is not checked.
	ClientID string
	// ScopeClaim names the claim holding the scope: "type" (the default, as
	// LoginID's server SDKs build it) or "scope" (newer docs). New panics on
	// any other value.
	ScopeClaim string
	// MaxAge is how long after its iat a token is accepted. Default 5m.
	MaxAge time.Duration
	// Skew is how far in the future an iat may be. Default 30s.
	Skew time.Duration
	// Endpoints is the endpoint table, matched in order. Nil means
	// DefaultEndpoints().
	Endpoints []Endpoint
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// Fault makes the simulator answer every request, whatever its path or
// token, with a failure instead of checking it. At most one kind applies, in
// the order Hang, Garbage, Status. The zero Fault means no fault.
type Fault struct {
	// Hang makes the request wait until its context is done (the client
	// gave up or the connection closed), then answers nothing.
	Hang bool
	// Garbage answers 200 with a body that is not JSON.
	Garbage bool
	// Status, when non-zero, is the HTTP status to answer with Body.
	Status int
	// Body is sent with Status. Empty means a {"code","message"} body.
	Body string
}

// Server is the simulated LoginID API. It implements http.Handler and is
// safe for concurrent use.
type Server struct {
	pub        *ecdsa.PublicKey
	clientID   string
	scopeClaim string
	maxAge     time.Duration
	skew       time.Duration
	now        func() time.Time
	routes     []route

	nonces nonceStore

	fault atomic.Pointer[Fault]

	accepted atomic.Int64
	rejected atomic.Int64
	replays  atomic.Int64
}

// route is an Endpoint with its pattern split into segments once.
type route struct {
	Endpoint
	segments []string
}

// New returns a simulator configured by o. It panics if o.PublicKey is nil
// or not a valid P-256 key, or if o.ScopeClaim is neither "", "type" nor
// "scope": these are mistakes in the test or demo wiring, not runtime
// conditions.
func New(o Options) *Server {
	if o.PublicKey == nil {
		panic("loginidsim: Options.PublicKey is nil")
	}
	if o.PublicKey.Curve != elliptic.P256() {
		panic("loginidsim: Options.PublicKey is not a P-256 key")
	}
	// ECDH rejects a point that is not on the curve.
	if _, err := o.PublicKey.ECDH(); err != nil {
		panic("loginidsim: Options.PublicKey is not a valid P-256 point")
	}
	s := &Server{
		pub:        o.PublicKey,
		clientID:   o.ClientID,
		scopeClaim: o.ScopeClaim,
		maxAge:     o.MaxAge,
		skew:       o.Skew,
		now:        o.Now,
	}
	switch s.scopeClaim {
	case "":
		s.scopeClaim = DefaultScopeClaim
	case "type", "scope":
	default:
		panic(`loginidsim: Options.ScopeClaim must be "type" or "scope"`)
	}
	if s.maxAge <= 0 {
		s.maxAge = DefaultMaxAge
	}
	if s.skew <= 0 {
		s.skew = DefaultSkew
	}
	if s.now == nil {
		s.now = time.Now
	}
	eps := o.Endpoints
	if eps == nil {
		eps = DefaultEndpoints()
	}
	for _, ep := range eps {
		s.routes = append(s.routes, route{Endpoint: ep, segments: strings.Split(ep.Pattern, "/")})
	}
	s.nonces.seen = make(map[string]time.Time)
	return s
}

// SetFault sets the failure every request gets from now on. SetFault(Fault{})
// clears it. Faulted requests touch neither the counters nor the nonces.
func (s *Server) SetFault(f Fault) {
	if f == (Fault{}) {
		s.fault.Store(nil)
		return
	}
	s.fault.Store(&f)
}

// Accepted returns how many requests were let through with a valid token.
func (s *Server) Accepted() int64 { return s.accepted.Load() }

// Rejected returns how many requests were refused with 401 or 403 because
// of their token, replays included. 404, 405 and faults are not counted.
func (s *Server) Rejected() int64 { return s.rejected.Load() }

// Replays returns how many requests were refused because their nonce had
// already been used. Each is also counted by Rejected.
func (s *Server) Replays() int64 { return s.replays.Load() }

// ServeHTTP answers one API request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f := s.fault.Load(); f != nil {
		s.serveFault(w, r, f)
		return
	}
	ep, allow := s.match(r.Method, r.URL.EscapedPath())
	if ep == nil {
		if allow != "" {
			w.Header().Set("Allow", allow)
			writeJSON(w, http.StatusMethodNotAllowed, errorBody{CodeMethodNotAllowed, "method not allowed"})
			return
		}
		writeJSON(w, http.StatusNotFound, errorBody{CodeNotFound, "not found"})
		return
	}
	c, rej := s.authorize(r, ep.Scope)
	if rej != nil {
		s.rejected.Add(1)
		if rej.Code == CodeTokenReplayed {
			s.replays.Add(1)
		}
		writeJSON(w, rej.status, errorBody{rej.Code, rej.Message})
		return
	}
	s.accepted.Add(1)
	writeJSON(w, http.StatusOK, okBody{
		Endpoint: ep.Method + " " + ep.Pattern,
		Scope:    ep.Scope,
		Username: c.username,
		UserID:   c.userID,
	})
}

// match finds the endpoint for method and path. When the path exists only
// with other methods it returns nil and their list for an Allow header.
func (s *Server) match(method, path string) (*Endpoint, string) {
	segs := strings.Split(path, "/")
	var allow []string
	for i := range s.routes {
		rt := &s.routes[i]
		if !matchSegments(rt.segments, segs) {
			continue
		}
		if rt.Method == method {
			return &rt.Endpoint, ""
		}
		allow = append(allow, rt.Method)
	}
	return nil, strings.Join(allow, ", ")
}

func matchSegments(pattern, path []string) bool {
	if len(pattern) != len(path) {
		return false
	}
	for i, p := range pattern {
		if len(p) > 2 && p[0] == '{' && p[len(p)-1] == '}' {
			if path[i] == "" {
				return false
			}
			continue
		}
		if p != path[i] {
			return false
		}
	}
	return true
}

func (s *Server) serveFault(w http.ResponseWriter, r *http.Request, f *Fault) {
	switch {
	case f.Hang:
		<-r.Context().Done()
	case f.Garbage:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("<html>upstream proxy error</html>"))
	default:
		if f.Body == "" {
			writeJSON(w, f.Status, errorBody{"internal_error", http.StatusText(f.Status)})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.Status)
		_, _ = w.Write([]byte(f.Body))
	}
}

type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type okBody struct {
	Endpoint string `json:"endpoint"`
	Scope    string `json:"scope"`
	Username string `json:"username,omitempty"`
	UserID   string `json:"user_id,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only fixed structs of strings are marshalled here.
		panic(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
