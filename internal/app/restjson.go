package app

import (
	"bytes"
	"math/bits"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// restMarshaler is the gateway's protojson marshaler, with GetToken's
// answer, the one REST message on the hot path, written directly: protojson
// walks the message by reflection, which was an eighth of a REST call's
// CPU. The JSON means what protojson's does with the options JSONPb is
// given (proto field names, unpopulated fields emitted); a test holds the
// two together. Anything the direct path does not cover goes to protojson.
//
// The Server answers every hit on a cached token with the same message
// (server.Server.answer), so the JSON of the last message written is kept
// in last and written again while the same message comes back: a cached
// token is encoded once, not per call. One message is kept, not one per
// provider: a mix of providers only misses, and pays one small allocation
// per miss. The gateway only writes the bytes Marshal returns, so callers
// can share them.
type restMarshaler struct {
	*runtime.JSONPb
	last *atomic.Pointer[restJSON] // nil: nothing is kept
}

// restJSON is the JSON written for resp, which it keeps alive, so the
// pointer cannot be reused for another message while it is here.
type restJSON struct {
	resp *tokenvendv1.GetTokenResponse
	json []byte
}

func newRESTMarshaler(pb *runtime.JSONPb) restMarshaler {
	return restMarshaler{JSONPb: pb, last: &atomic.Pointer[restJSON]{}}
}

func (m restMarshaler) Marshal(v any) ([]byte, error) {
	r, ok := v.(*tokenvendv1.GetTokenResponse)
	if !ok || !m.UseProtoNames || !m.EmitUnpopulated {
		return m.JSONPb.Marshal(v)
	}
	if m.last != nil {
		if j := m.last.Load(); j != nil && j.resp == r {
			return j.json, nil
		}
	}
	if !direct(r) {
		return m.JSONPb.Marshal(v)
	}
	b := appendGetTokenResponse(nil, r)
	if m.last != nil && !r.SingleUse { // a single-use token is never answered twice
		m.last.Store(&restJSON{resp: r, json: b})
	}
	return b, nil
}

// direct reports whether r can be written directly; protojson is left what
// it refuses (a string that is not UTF-8, a timestamp out of its range).
func direct(r *tokenvendv1.GetTokenResponse) bool {
	ok := utf8.ValidString(r.AccessToken) && utf8.ValidString(r.TokenType) &&
		timestampInRange(r.ExpireTime) && timestampInRange(r.IssueTime)
	for k, v := range r.Headers {
		ok = ok && utf8.ValidString(k) && utf8.ValidString(v)
	}
	return ok
}

func appendGetTokenResponse(b []byte, r *tokenvendv1.GetTokenResponse) []byte {
	size := 160 + len(r.AccessToken) + len(r.TokenType)
	keys := make([]string, 0, len(r.Headers))
	for k, v := range r.Headers {
		size += len(k) + len(v) + 6
		keys = append(keys, k)
	}
	slices.Sort(keys) // protojson's order
	b = slices.Grow(b, size)
	b = append(b, `{"access_token":`...)
	b = appendJSONString(b, r.AccessToken)
	b = append(b, `,"token_type":`...)
	b = appendJSONString(b, r.TokenType)
	b = append(b, `,"headers":{`...)
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, r.Headers[k])
	}
	b = append(b, `},"expire_time":`...)
	b = appendTimestamp(b, r.ExpireTime)
	b = append(b, `,"issue_time":`...)
	b = appendTimestamp(b, r.IssueTime)
	b = append(b, `,"single_use":`...)
	b = strconv.AppendBool(b, r.SingleUse)
	return append(b, '}')
}

// appendJSONString quotes s (valid UTF-8) as protojson does: only '"', '\\'
// and control characters are escaped.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c >= ' ':
			b = append(b, c)
		case c == '\b':
			b = append(b, `\b`...)
		case c == '\f':
			b = append(b, `\f`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '\r':
			b = append(b, `\r`...)
		case c == '\t':
			b = append(b, `\t`...)
		default:
			b = append(b, `\u`...)
			b = append(b, "0000"[1+(bits.Len8(c)-1)/4:]...)
			b = strconv.AppendUint(b, uint64(c), 16)
		}
	}
	return append(b, '"')
}

// The range protojson accepts: 0001-01-01T00:00:00Z to
// 9999-12-31T23:59:59.999999999Z.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

func timestampInRange(t *timestamppb.Timestamp) bool {
	secs, nanos := t.GetSeconds(), t.GetNanos()
	return t == nil || secs >= minTimestampSeconds && secs <= maxTimestampSeconds && nanos >= 0 && nanos < 1e9
}

// appendTimestamp writes t in RFC 3339, UTC, with 0, 3, 6 or 9 fractional
// digits, as protojson does; a nil t is null.
func appendTimestamp(b []byte, t *timestamppb.Timestamp) []byte {
	if t == nil {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = time.Unix(t.GetSeconds(), int64(t.GetNanos())).UTC().AppendFormat(b, "2006-01-02T15:04:05.000000000")
	for range 3 {
		b, _ = bytes.CutSuffix(b, []byte("000"))
	}
	b, _ = bytes.CutSuffix(b, []byte("."))
	return append(b, `Z"`...)
}
