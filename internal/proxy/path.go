package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/tokenvend/tokenvend/internal/broker"
)

// split reads the provider's name and the path below it from the request
// target, refusing anything that could take the call elsewhere than under
// the upstream's path: only origin-form targets ("/kyc/users/me"), no dot
// segments, no encoded dots, slashes or backslashes (nor an encoded '%',
// which would let a second decoding produce them), no empty segments, no
// backslashes, no control characters. What passes decodes to the same
// segments whoever decodes it, so the upstream sees the path the check
// saw.
func split(r *http.Request) (name, path, rawPath string, err error) {
	target := r.RequestURI
	if r.Method == http.MethodConnect || !strings.HasPrefix(target, "/") {
		return "", "", "", badPath("the request target must be a path (/{provider}/{path}), not an absolute URL or an authority")
	}
	raw, _, _ := strings.Cut(target, "?")
	if err := checkPath(raw); err != nil {
		return "", "", "", err
	}
	rawName, rest, _ := strings.Cut(raw[1:], "/")
	if rawName == "" {
		return "", "", "", &requestError{status: http.StatusNotFound, reason: ReasonProviderNotFound,
			msg: "name a provider: {proxy_addr}/{provider}/{path}"}
	}
	name, _ = url.PathUnescape(rawName) // checkPath decoded every segment
	if strings.Contains(raw[1:], "/") {
		rawPath = "/" + rest
		path, _ = url.PathUnescape(rawPath)
	}
	return name, path, rawPath, nil
}

// checkPath checks an escaped path (it starts with '/').
func checkPath(raw string) error {
	lower := strings.ToLower(raw)
	for _, enc := range []string{"%2e", "%2f", "%5c", "%25"} {
		if strings.Contains(lower, enc) {
			return badPath(fmt.Sprintf("the path must not hold an encoded %q: it could change which path the upstream serves", enc))
		}
	}
	if strings.Contains(raw, `\`) {
		return badPath("the path must not hold a backslash")
	}
	if strings.Contains(raw, "//") {
		return badPath("the path must not hold an empty segment (//)")
	}
	for _, seg := range strings.Split(raw[1:], "/") {
		dec, err := url.PathUnescape(seg)
		if err != nil {
			return badPath("the path is not validly escaped")
		}
		// "..;x" is ".." to servers that take ';' as a parameter separator.
		if base, _, _ := strings.Cut(dec, ";"); base == "." || base == ".." {
			return badPath("the path must not hold a . or .. segment: it would leave the upstream's path")
		}
		if strings.ContainsFunc(dec, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
			return badPath("the path must not hold control characters")
		}
	}
	return nil
}

func badPath(msg string) error {
	return &requestError{status: http.StatusBadRequest, reason: ReasonInvalidPath, msg: msg}
}

// single returns a header's only value; sent twice, it is ambiguous.
func single(h http.Header, name string) (string, error) {
	switch v := h.Values(name); len(v) {
	case 0:
		return "", nil
	case 1:
		return v[0], nil
	default:
		return "", &requestError{status: http.StatusBadRequest, reason: ReasonInvalidHeader,
			msg: fmt.Sprintf("%s is sent more than once: send it once", name)}
	}
}

// unrouted answers a request for a provider without a proxy block. An
// unidentified caller learns nothing, not even whether the name exists,
// as with GetToken.
func (p *Proxy) unrouted(caller, name string) error {
	if p.policy.Enforced() && caller == "" {
		return unidentified
	}
	if !p.policy.MayUse(caller, name) {
		// As GetToken answers: which providers exist, or are proxied, is
		// not the business of a caller without a grant for them.
		return &requestError{status: http.StatusForbidden, code: "PERMISSION_DENIED", reason: "CALLER_NOT_ALLOWED",
			msg: fmt.Sprintf("caller %q has no grant for this provider: ask for one", caller)}
	}
	return &requestError{status: http.StatusNotFound, reason: ReasonProviderNotFound,
		msg: fmt.Sprintf("no provider named %q is proxied: a provider needs a proxy block with an upstream",
			broker.Shown(broker.Request{Provider: name}).Provider)}
}

// readCloser is a request body over b; each call gives a fresh one.
func readCloser(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }
