package app

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tokenvend/tokenvend/internal/broker"
)

// serving is what each provider's gRPC health says, kept for the
// tokenvend_provider_serving gauge (1 SERVING, 0 NOT_SERVING): a
// dashboard or an alert cannot call grpc.health.v1, and a scrape must
// see a provider whose credentials were rejected without waiting for a
// caller to be refused. Shutdown is left out on purpose: a stopping
// replica turns every health name NOT_SERVING, which is no provider's
// fault.
type serving struct {
	mu sync.Mutex
	up map[string]bool
}

// newServing registers the gauge on m, every provider serving.
func newServing(m metric.Meter, providers []broker.Provider) (*serving, error) {
	s := &serving{up: make(map[string]bool, len(providers))}
	for _, p := range providers {
		s.up[p.Name] = true
	}
	gauge, err := m.Int64ObservableGauge("tokenvend.provider.serving",
		metric.WithDescription("1 while a provider's gRPC health is SERVING, 0 while it is NOT_SERVING (its credentials were rejected)."))
	if err != nil {
		return nil, err
	}
	if _, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		for name, up := range s.up {
			var v int64
			if up {
				v = 1
			}
			o.ObserveInt64(gauge, v, metric.WithAttributes(attribute.String("provider", name)))
		}
		return nil
	}, gauge); err != nil {
		return nil, err
	}
	return s, nil
}

// record keeps a provider's health for the gauge; a provider a reload
// removed (SERVICE_UNKNOWN) leaves it.
func (s *serving) record(provider string, st healthpb.HealthCheckResponse_ServingStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st == healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		delete(s.up, provider)
		return
	}
	s.up[provider] = st == healthpb.HealthCheckResponse_SERVING
}
