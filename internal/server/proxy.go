package server

import (
	"context"

	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/proxy"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Vendor is the Server as proxy mode uses it: the GetToken and
// InvalidateToken paths, policy, audit and counts included, with the
// domain's errors rather than gRPC statuses.
func (s *Server) Vendor() proxy.Vendor { return vendor{s} }

type vendor struct{ s *Server }

func (v vendor) Vend(ctx context.Context, caller string, r proxy.Request) (proxy.Credential, error) {
	a, scope, err := v.s.vend(ctx, caller, broker.Request{Provider: r.Provider, Scope: r.Scope, Subject: r.Subject}, nil)
	if err != nil {
		return proxy.Credential{}, err
	}
	return proxy.Credential{
		Headers:     a.Token.Headers,
		AccessToken: a.Token.AccessToken,
		Scope:       scope,
		Fingerprint: v.s.state.Load().fingerprint(r.Provider, a.Token.AccessToken),
	}, nil
}

func (v vendor) Invalidate(ctx context.Context, caller string, r proxy.Request, accessToken string, upstreamStatus int) (bool, error) {
	result, err := v.s.report(ctx, caller, broker.Request{Provider: r.Provider, Scope: r.Scope, Subject: r.Subject}, accessToken, upstreamStatus)
	if err != nil {
		return false, err
	}
	return result == token.Invalidated, nil
}
