package auth

import (
	"context"
	"crypto/x509"
	"net/http"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// APIKeyHeader carries a caller's API key, as gRPC metadata or HTTP header.
const APIKeyHeader = "x-api-key"

// Interceptor identifies callers of the gRPC port by their verified
// client certificate, in a mesh the x-forwarded-client-cert metadata, or
// their x-api-key metadata.
func (p *Policy) Interceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		var cert *x509.Certificate
		if pr, ok := peer.FromContext(ctx); ok {
			if ti, ok := pr.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
				cert = ti.State.VerifiedChains[0][0]
			}
		}
		var key string
		if vals := metadata.ValueFromIncomingContext(ctx, APIKeyHeader); len(vals) == 1 {
			key = vals[0]
		}
		var xfcc []string
		if p.mesh { // elsewhere the header means nothing and is not read
			xfcc = metadata.ValueFromIncomingContext(ctx, XFCCHeader)
		}
		if id, ok := p.Identify(cert, xfcc, key); ok {
			ctx = WithCaller(ctx, id)
		}
		return handler(ctx, req)
	}
}

// HTTP identifies REST callers by the verified certificate of their TLS
// connection, in a mesh the x-forwarded-client-cert header, or their
// x-api-key header, and passes the identity on in the
// request's context, which the gateway hands to the Server.
func (p *Policy) HTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var cert *x509.Certificate
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
			cert = r.TLS.VerifiedChains[0][0]
		}
		var xfcc []string
		if p.mesh {
			xfcc = r.Header.Values(XFCCHeader)
		}
		if id, ok := p.Identify(cert, xfcc, r.Header.Get(APIKeyHeader)); ok {
			r = r.WithContext(WithCaller(r.Context(), id))
		}
		next.ServeHTTP(w, r)
	})
}
