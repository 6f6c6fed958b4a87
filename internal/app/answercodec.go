package app

import (
	"sync/atomic"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// answerCodec is gRPC's proto codec, except that the GetTokenResponse the
// Server shares between the hits on a cached token (server.Server.answer)
// is encoded on its first call only, and its bytes sent again while the
// same message comes back. gRPC's codec sizes a message, then encodes it:
// for GetToken's ~600-byte answer that was 3.6-3.9 us per call against
// 1.3 us for a health check's (bench/README.md, issue 18). As with the
// REST JSON (restMarshaler), one message is kept, so a mix of providers
// only misses, and single-use answers are never kept.
type answerCodec struct {
	encoding.CodecV2
	last atomic.Pointer[encodedAnswer]
}

// encodedAnswer is the encoding of resp, which it keeps alive, so the
// pointer cannot be reused for another message while it is here.
type encodedAnswer struct {
	resp *tokenvendv1.GetTokenResponse
	data []byte
}

func newAnswerCodec() *answerCodec {
	return &answerCodec{CodecV2: encoding.GetCodecV2(proto.Name)}
}

func (c *answerCodec) Marshal(v any) (mem.BufferSlice, error) {
	r, ok := v.(*tokenvendv1.GetTokenResponse)
	if !ok || r.SingleUse {
		return c.CodecV2.Marshal(v)
	}
	if e := c.last.Load(); e != nil && e.resp == r {
		// A SliceBuffer is never written to or recycled: gRPC only reads
		// it, so every call can send the same bytes.
		return mem.BufferSlice{mem.SliceBuffer(e.data)}, nil
	}
	data, err := c.CodecV2.Marshal(v)
	if err != nil {
		return nil, err
	}
	b := data.Materialize() // a copy: data's buffers may go back to a pool
	data.Free()
	c.last.Store(&encodedAnswer{resp: r, data: b})
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}
