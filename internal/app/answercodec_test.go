package app

import (
	"testing"

	gproto "google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// TestACachedAnswerIsEncodedOnce: the message the Server shares between
// the hits on a cached token is encoded on its first call only, and the
// bytes are its encoding; another message is encoded for itself, and a
// single-use one is not kept.
func TestACachedAnswerIsEncodedOnce(t *testing.T) {
	t.Parallel()
	c := newAnswerCodec()
	marshal := func(r *tokenvendv1.GetTokenResponse) []byte {
		t.Helper()
		data, err := c.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) != 1 {
			t.Fatalf("got %d buffers, want 1", len(data))
		}
		b := data[0].ReadOnlyData()
		var got tokenvendv1.GetTokenResponse
		if err := gproto.Unmarshal(b, &got); err != nil || !gproto.Equal(&got, r) {
			t.Fatalf("the bytes decode to %v (%v), want %v", &got, err, r)
		}
		return b
	}
	cached := &tokenvendv1.GetTokenResponse{AccessToken: "t1", TokenType: "Bearer",
		Headers: map[string]string{"Authorization": "Bearer t1"}, ExpireTime: timestamppb.Now()}
	first := marshal(cached)
	if again := marshal(cached); &again[0] != &first[0] {
		t.Errorf("the same message was encoded again")
	}
	next := &tokenvendv1.GetTokenResponse{AccessToken: "t2", TokenType: "Bearer", Headers: map[string]string{"Authorization": "Bearer t2"}}
	marshal(next)
	marshal(&tokenvendv1.GetTokenResponse{AccessToken: "m1", TokenType: "Bearer", SingleUse: true})
	if e := c.last.Load(); e == nil || e.resp != next {
		t.Errorf("after a single-use answer, the kept message is %v, want the cached one's", e)
	}
}
