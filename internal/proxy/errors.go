package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/token"
)

// ErrorHeader is set on every answer tokenvend gives itself, to the
// reason in the body, so a caller can tell it from the upstream's.
const ErrorHeader = "Tokenvend-Error"

// Reasons of the proxy's own answers; stable API, as GetToken's are.
const (
	// ReasonInvalidPath: the request target could leave the upstream's
	// path (dot segments, encoded dots or slashes, absolute-form, CONNECT).
	ReasonInvalidPath = "INVALID_PROXY_PATH"
	// ReasonInvalidHeader: Tokenvend-Scope or Tokenvend-Subject sent twice.
	ReasonInvalidHeader = "INVALID_PROXY_HEADER"
	// ReasonBodyUnreadable: the caller's body ended before its
	// Content-Length.
	ReasonBodyUnreadable = "BODY_UNREADABLE"
	// ReasonUpstreamFailed: the proxied call got no usable answer
	// (unreachable, connection reset, oversized headers).
	ReasonUpstreamFailed = "PROXY_UPSTREAM_FAILED"
	// ReasonTimeout: the request did not finish within proxy.timeout.
	ReasonTimeout = "PROXY_TIMEOUT"
	// ReasonProviderNotFound: no provider of that name is proxied.
	ReasonProviderNotFound = broker.ReasonProviderNotFound
	// reasonCallerUnidentified is server.ReasonCallerUnidentified.
	reasonCallerUnidentified = "CALLER_UNIDENTIFIED"
	// reasonCancelled is never sent: the caller has gone.
	reasonCancelled = "CANCELLED"
)

// statusClientClosed is recorded (never sent) for a caller that went away.
const statusClientClosed = 499

// requestError is the proxy's own refusal, already classified.
type requestError struct {
	status      int
	code        string
	reason, msg string
}

func (e *requestError) Error() string { return e.msg }

var unidentified = &requestError{status: http.StatusUnauthorized, code: "UNAUTHENTICATED", reason: reasonCallerUnidentified,
	msg: "the caller is not identified: present a client certificate signed by the configured CA, or an API key in x-api-key"}

// kindAnswers are the HTTP status and code name of each error kind: the
// caller's mistakes as 4xx, tokenvend's failure to get a credential as
// 502 (the upstream refused the login) or 503 (it is unavailable).
var kindAnswers = map[token.Kind]struct {
	status int
	code   string
}{
	token.KindInternal:        {http.StatusInternalServerError, "INTERNAL"},
	token.KindInvalid:         {http.StatusBadRequest, "INVALID_ARGUMENT"},
	token.KindNotFound:        {http.StatusNotFound, "NOT_FOUND"},
	token.KindUnauthenticated: {http.StatusUnauthorized, "UNAUTHENTICATED"},
	token.KindDenied:          {http.StatusForbidden, "PERMISSION_DENIED"},
	token.KindRejected:        {http.StatusBadGateway, "FAILED_PRECONDITION"},
	token.KindUnavailable:     {http.StatusServiceUnavailable, "UNAVAILABLE"},
}

// statusCodes name the code of the proxy's own refusals by status.
var statusCodes = map[int]string{http.StatusBadRequest: "INVALID_ARGUMENT", http.StatusNotFound: "NOT_FOUND",
	http.StatusBadGateway: "UNAVAILABLE", http.StatusGatewayTimeout: "DEADLINE_EXCEEDED"}

// errorBody is the JSON of every answer tokenvend gives itself.
type errorBody struct {
	Code    string `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// answer is the one place an error becomes the proxy's HTTP answer, as
// server.toStatus is for gRPC. The cause (token.Error.Err) never leaves
// the service; nor does any credential, which no message holds.
func answer(err error, provider string) (status int, body errorBody, retryAfter int) {
	var re *requestError
	var e *token.Error
	switch {
	case errors.As(err, &re):
		code := re.code
		if code == "" {
			code = statusCodes[re.status]
		}
		return re.status, errorBody{code, re.reason, re.msg}, 0
	case errors.As(err, &e):
	case errors.Is(err, context.Canceled):
		return statusClientClosed, errorBody{"CANCELLED", reasonCancelled, "the request was cancelled"}, 0
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, errorBody{"DEADLINE_EXCEEDED", ReasonTimeout, "the request did not finish within proxy.timeout"}, 0
	default:
		e = &token.Error{Kind: token.KindInternal, Reason: "INTERNAL", Message: "internal error"}
	}
	ka, ok := kindAnswers[e.Kind]
	if !ok {
		ka = kindAnswers[token.KindInternal]
	}
	msg := e.Message
	if e.Kind == token.KindRejected || e.Kind == token.KindUnavailable {
		msg = fmt.Sprintf("provider %q: %s", provider, msg)
	}
	if e.RetryAfter > 0 {
		retryAfter = int(e.RetryAfter.Seconds() + 0.5)
	}
	return ka.status, errorBody{ka.code, e.Reason, strings.ToValidUTF8(msg, "?")}, retryAfter
}

// fail answers the request with err, unless the caller has gone.
func (p *Proxy) fail(w http.ResponseWriter, c *call, err error) {
	status, body, retryAfter := answer(err, broker.Shown(broker.Request{Provider: c.req.Provider}).Provider)
	c.status, c.reason = status, body.Reason
	if status == statusClientClosed {
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set(ErrorHeader, body.Reason)
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(retryAfter))
	}
	b, _ := json.Marshal(body)
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
