package auth

import (
	"errors"
	"strings"
)

// XFCCHeader is the header in which an Envoy-based mesh sidecar (Istio,
// Consul) tells the service which client certificate it verified.
const XFCCHeader = "x-forwarded-client-cert"

// errXFCC is any malformed x-forwarded-client-cert value.
var errXFCC = errors.New("malformed x-forwarded-client-cert")

// xfccURI returns the URI of the client certificate that the nearest proxy,
// the pod's sidecar, verified: the URI of the LAST element of an
// x-forwarded-client-cert value. Earlier elements come from proxies further
// away, or from the caller itself when the sidecar appends to what it
// received (Envoy's APPEND_FORWARD); SANITIZE_SET leaves the sidecar's
// element alone. So only the last one is the sidecar's word.
//
// The value is parsed strictly, as Envoy writes it: elements separated by
// ',', each a ';'-separated list of Key=value pairs, a value either bare
// (printable ASCII but none of ",;=\"") or double-quoted with \" for a quote. Anything else, a
// last element without exactly one URI, or an empty URI is an error. A
// caller that sends a header ending in an open quote, hoping to swallow
// the sidecar's element, gets an error too: the sidecar's element then
// cannot parse as the tail of a quoted value.
func xfccURI(v string) (string, error) {
	var uri string
	uris := 0
	for i := 0; ; {
		// One Key=value pair.
		k := i
		for i < len(v) && isKeyByte(v[i]) {
			i++
		}
		if i == k || i == len(v) || v[i] != '=' {
			return "", errXFCC
		}
		key := v[k:i]
		i++
		var val string
		if i < len(v) && v[i] == '"' {
			var b strings.Builder
			for i++; ; i++ {
				if i == len(v) {
					return "", errXFCC
				}
				if v[i] == '\\' && i+1 < len(v) && v[i+1] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				if v[i] == '"' {
					i++
					break
				}
				b.WriteByte(v[i])
			}
			val = b.String()
		} else {
			s := i
			for i < len(v) && !strings.ContainsRune(",;=\"", rune(v[i])) && ' ' < v[i] && v[i] < 0x7f {
				i++
			}
			val = v[s:i]
		}
		if strings.EqualFold(key, "URI") {
			uri, uris = val, uris+1
		}
		switch {
		case i == len(v):
			if uris != 1 || uri == "" {
				return "", errXFCC
			}
			return uri, nil
		case v[i] == ';':
		case v[i] == ',':
			uri, uris = "", 0 // a new element: only the last one counts
		default:
			return "", errXFCC
		}
		i++
	}
}

// isKeyByte reports whether b may be part of an XFCC key (By, Hash, Cert,
// Chain, Subject, URI, DNS).
func isKeyByte(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z'
}
