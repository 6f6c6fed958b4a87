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

// gatewayCallerKey carries the identity the REST gateway established to
// the internal gRPC server. Only that server, reachable through an
// in-process pipe and nothing else, reads it: a caller of the public gRPC
// port who sends it is ignored.
const gatewayCallerKey = "tokenvend-gateway-caller"

// PublicInterceptor identifies callers of the public gRPC port by their
// verified client certificate or their x-api-key metadata.
func (p *Policy) PublicInterceptor() grpc.UnaryServerInterceptor {
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
		if id, ok := p.Identify(cert, key); ok {
			ctx = WithCaller(ctx, id)
		}
		return handler(ctx, req)
	}
}

// GatewayInterceptor identifies callers on the gateway's internal gRPC
// server from the identity the gateway passed along.
func GatewayInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if vals := metadata.ValueFromIncomingContext(ctx, gatewayCallerKey); len(vals) == 1 && vals[0] != "" {
			ctx = WithCaller(ctx, vals[0])
		}
		return handler(ctx, req)
	}
}

// GatewayMetadata identifies a REST caller by the verified certificate of
// its TLS connection or its x-api-key header, and returns the metadata
// that hands the identity to the internal gRPC server.
func (p *Policy) GatewayMetadata(_ context.Context, r *http.Request) metadata.MD {
	var cert *x509.Certificate
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		cert = r.TLS.VerifiedChains[0][0]
	}
	if id, ok := p.Identify(cert, r.Header.Get(APIKeyHeader)); ok {
		return metadata.Pairs(gatewayCallerKey, id)
	}
	return nil
}
