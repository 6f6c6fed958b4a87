package server

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/codes"

	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/broker"
)

// Swap makes s answer from b and policy from now on, for a config reload.
// Calls already running finish with the broker and policy they started
// with. A provider still configured keeps its counters; a removed one's
// series leave the metrics, and the token its fingerprint memo held is
// forgotten.
func (s *Server) Swap(b *broker.Broker, policy *auth.Policy) {
	s.swapMu.Lock()
	defer s.swapMu.Unlock()
	old := s.state.Load()
	next := newState(b, policy, old)
	s.state.Store(next)
	for name, p := range old.providers {
		if next.providers[name] == nil {
			p.fp.Store(nil)
		}
	}
	s.requests.mu.Lock()
	defer s.requests.mu.Unlock()
	for k := range s.requests.failed {
		if k[0] != "" && next.providers[k[0]] == nil {
			delete(s.requests.failed, k)
		}
	}
}

// newState is the state for b and policy, with old's counters for the
// providers it still has.
func newState(b *broker.Broker, policy *auth.Policy, old *state) *state {
	st := &state{broker: b, policy: policy, providers: map[string]*providerStats{}}
	for _, p := range b.Providers() {
		if old != nil && old.providers[p.Name] != nil {
			st.providers[p.Name] = old.providers[p.Name]
			continue
		}
		st.providers[p.Name] = &providerStats{okAttr: metric.WithAttributeSet(attribute.NewSet(
			attribute.String("provider", p.Name), attribute.String("code", codes.OK.String())))}
	}
	return st
}
