// Package upstream is the one HTTP exchange every provider makes: send a
// request, read a bounded answer, and classify what went wrong the same way
// for every scheme (unreachable, timing out, 5xx, garbage: unavailable).
package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/tokenvend/tokenvend/internal/token"
)

// MaxBody bounds what is read of an answer: a login answer is small, and an
// upstream must not be able to exhaust memory.
const MaxBody = 1 << 20

// Do sends req and returns the status and body of the answer, whatever
// its status. A transport failure or an unreadable body is a
// token.KindUnavailable error.
func Do(hc *http.Client, req *http.Request) (int, []byte, error) {
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return 0, nil, token.Unavailable("the upstream did not answer in time", err)
		}
		return 0, nil, token.Unavailable("could not reach the upstream", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return 0, nil, token.Unavailable("the upstream's answer was cut short", err)
	}
	if len(body) > MaxBody {
		return 0, nil, token.Unavailable("the upstream's answer is too large", nil)
	}
	return resp.StatusCode, body, nil
}

// Post sends body to url with the given content type and extra headers,
// asking for JSON, and returns the answer as Do does.
func Post(ctx context.Context, hc *http.Client, url, contentType string, body []byte, header map[string]string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	return Do(hc, req)
}

// Unexpected is the error for an answer a scheme does not account for: a
// 5xx, a 429, or any status outside its contract. None of them says the
// credentials are wrong, so all are transient.
func Unexpected(status int) *token.Error {
	return token.Unavailable(fmt.Sprintf("the upstream answered HTTP %d", status), nil)
}

// Code returns s if it looks like an error code (letters, digits, '_',
// '-', '.', at most 64), else "UNRECOGNISED": an upstream's code goes to
// callers in error metadata, and free text from an upstream (which a proxy
// may fill with an echo of the request) must not.
func Code(s string) string {
	if len(s) == 0 || len(s) > 64 {
		return "UNRECOGNISED"
	}
	for _, c := range s {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return "UNRECOGNISED"
		}
	}
	return s
}

// Garbage is the error for an answer that cannot be read as the contract
// says. cause must not hold the body (it may hold a token).
func Garbage(what string) *token.Error {
	return token.Unavailable("the upstream answered with "+what, nil)
}
