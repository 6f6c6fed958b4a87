package app

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// sameAsProtojson fails unless the direct GetTokenResponse JSON is, byte
// for byte once protojson's deliberately unstable spacing is compacted
// away, what protojson writes; and unless both refuse what protojson
// refuses.
func sameAsProtojson(t *testing.T, r *tokenvendv1.GetTokenResponse) {
	t.Helper()
	pb := &runtime.JSONPb{MarshalOptions: protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}}
	want, wantErr := pb.Marshal(r)
	got, gotErr := newRESTMarshaler(pb).Marshal(r)
	if wantErr != nil {
		if gotErr == nil {
			t.Fatalf("protojson refuses %v (%v); the direct path wrote %s", r, wantErr, got)
		}
		return
	}
	if gotErr != nil {
		t.Fatalf("%v: %v", r, gotErr)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, want); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, compact.Bytes()) {
		t.Fatalf("for %v\n got %s\nwant %s", r, got, compact.Bytes())
	}
}

func TestRESTJSONIsProtojson(t *testing.T) {
	t.Parallel()
	ts := func(s int64, n int32) *timestamppb.Timestamp { return &timestamppb.Timestamp{Seconds: s, Nanos: n} }
	cases := []*tokenvendv1.GetTokenResponse{
		{},
		{AccessToken: "eyJ.x.y", TokenType: "Bearer", Headers: map[string]string{"Authorization": "Bearer eyJ.x.y", "X-TENANT-ID": "t1"},
			ExpireTime: ts(1795455472, 0), IssueTime: ts(1795451872, 299751847)},
		{SingleUse: true, Headers: map[string]string{}, ExpireTime: ts(0, 1_000_000), IssueTime: ts(0, 1_000)},
		{ExpireTime: ts(1, 1), IssueTime: ts(-1, 999_999_999)},
		{ExpireTime: ts(minTimestampSeconds, 0), IssueTime: ts(maxTimestampSeconds, 999_999_999)},
		{AccessToken: "quote\" back\\ nl\n cr\r tab\t bs\b ff\f nul\x00 us\x1f del\x7f <>&", TokenType: "\u2028\u2029 é 😀"},
		{Headers: map[string]string{"b": "2", "a": "1", "": "", "é": "\x01", "A": "0"}},
		// What protojson refuses, the direct path must refuse too.
		{AccessToken: "not \xff UTF-8"},
		{Headers: map[string]string{"k": "\xc3"}},
		{Headers: map[string]string{"\xc3": "v"}},
		{ExpireTime: ts(maxTimestampSeconds+1, 0)},
		{IssueTime: ts(minTimestampSeconds-1, 0)},
		{IssueTime: ts(0, -1)},
		{IssueTime: ts(0, 1e9)},
	}
	for _, r := range cases {
		sameAsProtojson(t, r)
	}

	// And a few thousand built from pieces that stress each rule.
	rnd := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"", "a", "Bearer ", "\"", "\\", "\n", "\x00", "\x1f", " ", "é", "\u2028", "😀", "\xff", "/", "<", "eyJhbGciOiJFUzI1NiJ9"}
	str := func() string {
		var sb strings.Builder
		for range rnd.IntN(6) {
			sb.WriteString(pieces[rnd.IntN(len(pieces))])
		}
		return sb.String()
	}
	stamp := func() *timestamppb.Timestamp {
		if rnd.IntN(5) == 0 {
			return nil
		}
		nanos := []int32{0, 1, 999, 1000, 120_000, 1_000_000, 500_000_000, 999_999_999, rnd.Int32N(1e9)}
		return ts(rnd.Int64N(maxTimestampSeconds-minTimestampSeconds)+minTimestampSeconds, nanos[rnd.IntN(len(nanos))])
	}
	for range 3000 {
		r := &tokenvendv1.GetTokenResponse{AccessToken: str(), TokenType: str(), ExpireTime: stamp(), IssueTime: stamp(), SingleUse: rnd.IntN(2) == 0}
		if n := rnd.IntN(5); n > 0 {
			r.Headers = map[string]string{}
			for range n {
				r.Headers[str()] = str()
			}
		}
		sameAsProtojson(t, r)
	}
}

// The gateway's other messages (errors, ListProviders) are protojson's.
func TestRESTJSONOtherMessages(t *testing.T) {
	t.Parallel()
	m := newRESTMarshaler(&runtime.JSONPb{MarshalOptions: protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}})
	got, err := m.Marshal(&tokenvendv1.ListProvidersResponse{Providers: []*tokenvendv1.Provider{{Name: "kyc", DefaultScope: "s"}}})
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Providers []map[string]any `json:"providers"`
	}
	if err := json.Unmarshal(got, &v); err != nil || len(v.Providers) != 1 || v.Providers[0]["default_scope"] != "s" || v.Providers[0]["has_valid_credential"] != false {
		t.Fatalf("got %s (%v)", got, err)
	}
}

func FuzzRESTJSONIsProtojson(f *testing.F) {
	f.Add("eyJ.x.y", "Bearer", "Authorization", "Bearer eyJ.x.y", int64(1795455472), int32(299751847), true)
	f.Add("\x00\"\\\xff", "\u2028", "", "\x1f", int64(maxTimestampSeconds+1), int32(-1), false)
	f.Fuzz(func(t *testing.T, tok, typ, k, v string, secs int64, nanos int32, single bool) {
		sameAsProtojson(t, &tokenvendv1.GetTokenResponse{AccessToken: tok, TokenType: typ, Headers: map[string]string{k: v},
			ExpireTime: &timestamppb.Timestamp{Seconds: secs, Nanos: nanos}, SingleUse: single})
	})
}

// TestRESTJSONOfACachedTokenIsEncodedOnce: the message the Server shares
// between the hits on a cached token is encoded on its first call only;
// another message, even one equal to it, is encoded for itself, and a
// single-use one is not kept.
func TestRESTJSONOfACachedTokenIsEncodedOnce(t *testing.T) {
	t.Parallel()
	m := newRESTMarshaler(&runtime.JSONPb{MarshalOptions: protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}})
	marshal := func(r *tokenvendv1.GetTokenResponse) []byte {
		t.Helper()
		b, err := m.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cached := &tokenvendv1.GetTokenResponse{AccessToken: "t1", TokenType: "Bearer", Headers: map[string]string{"Authorization": "Bearer t1"}}
	first := marshal(cached)
	if again := marshal(cached); &again[0] != &first[0] {
		t.Errorf("the same message was encoded again")
	}
	next := &tokenvendv1.GetTokenResponse{AccessToken: "t2", TokenType: "Bearer", Headers: map[string]string{"Authorization": "Bearer t2"}}
	if got := marshal(next); !bytes.Contains(got, []byte(`"access_token":"t2"`)) || !bytes.Contains(got, []byte(`"Authorization":"Bearer t2"`)) {
		t.Errorf("the next token's message: got %s", got)
	}
	minted := &tokenvendv1.GetTokenResponse{AccessToken: "m1", TokenType: "Bearer", SingleUse: true}
	marshal(minted)
	if j := m.last.Load(); j == nil || j.resp != next {
		t.Errorf("after a single-use answer, the kept message is %v, want the cached one's", j)
	}
}

// BenchmarkRESTJSON is the REST answer of a cached token (~600 bytes of
// JSON, as the demo's kyc answers): encoded per call, as it was, and kept
// across the hits on the message the Server shares.
func BenchmarkRESTJSON(b *testing.B) {
	tok := "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + strings.Repeat("eyJzdWIiOiI4ZjE0ZTQ1Zi1jZWE2", 8) + ".c2lnbmF0dXJlLW9mLWEtYmVuY2gtdG9rZW4tMzItYnl0ZXM"
	r := &tokenvendv1.GetTokenResponse{AccessToken: tok, TokenType: "Bearer", Headers: map[string]string{"Authorization": "Bearer " + tok},
		IssueTime: timestamppb.Now(), ExpireTime: timestamppb.Now()}
	pb := &runtime.JSONPb{MarshalOptions: protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}}
	for _, c := range []struct {
		name string
		m    restMarshaler
	}{{"per call", restMarshaler{JSONPb: pb}}, {"kept", newRESTMarshaler(pb)}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.m.Marshal(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
