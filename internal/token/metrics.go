package token

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metrics are the cache's instruments, shared by every provider's Cache.
// A nil *Metrics records nothing.
type Metrics struct {
	logins      metric.Int64Counter
	failures    metric.Int64Counter
	duration    metric.Float64Histogram
	storeEvents metric.Int64Counter

	mu     sync.Mutex
	caches []*Cache
}

// NewMetrics creates the instruments on m.
func NewMetrics(m metric.Meter) (*Metrics, error) {
	var x Metrics
	var err error
	lookups, err := m.Int64ObservableCounter("tokenvend.cache.lookups",
		metric.WithDescription("Token lookups by result: hit, login (this caller started one), shared (waited on another's), held (answered from a rejection hold)."))
	if err != nil {
		return nil, err
	}
	if x.logins, err = m.Int64Counter("tokenvend.logins",
		metric.WithDescription("Upstream logins and refreshes, by outcome.")); err != nil {
		return nil, err
	}
	if x.failures, err = m.Int64Counter("tokenvend.login.failures",
		metric.WithDescription("Upstream logins and refreshes that failed, by error kind.")); err != nil {
		return nil, err
	}
	if x.duration, err = m.Float64Histogram("tokenvend.login.duration", metric.WithUnit("s"),
		metric.WithDescription("Time taken by an upstream login or refresh, retries included.")); err != nil {
		return nil, err
	}
	if x.storeEvents, err = m.Int64Counter("tokenvend.store.events",
		metric.WithDescription("Shared-store events on the login path: lease_wait (another replica held the lease), takeover (its holder ended without a token), adopted (another replica's token used), fenced (a late write refused), error (a store call failed), replaced (a local copy replaced by the newer stored token after a change), dropped (a local copy dropped: the stored token was removed).")); err != nil {
		return nil, err
	}
	waiters, err := m.Int64ObservableGauge("tokenvend.login.waiters",
		metric.WithDescription("Callers waiting on an upstream login right now."))
	if err != nil {
		return nil, err
	}
	if _, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		x.mu.Lock()
		defer x.mu.Unlock()
		for _, c := range x.caches {
			o.ObserveInt64(waiters, c.waiting.Load(), metric.WithAttributes(attribute.String("provider", c.o.Provider)))
			for i := range c.lookups {
				if n := c.lookups[i].Load(); n > 0 {
					o.ObserveInt64(lookups, n, c.lookupAttrs[i])
				}
			}
		}
		return nil
	}, waiters, lookups); err != nil {
		return nil, err
	}
	return &x, nil
}

// add includes c in the waiters gauge.
func (m *Metrics) add(c *Cache) {
	if m != nil {
		m.mu.Lock()
		m.caches = append(m.caches, c)
		m.mu.Unlock()
	}
}

var kindNames = map[Kind]string{
	KindInternal: "internal", KindInvalid: "invalid", KindNotFound: "not_found",
	KindDenied: "denied", KindUnauthenticated: "unauthenticated", KindRejected: "rejected", KindUnavailable: "unavailable",
}

func (m *Metrics) login(ctx context.Context, provider string, took time.Duration, err error) {
	if m == nil {
		return
	}
	outcome := "ok"
	if err != nil {
		outcome = kindNames[KindOf(err)]
	}
	attrs := metric.WithAttributes(attribute.String("provider", provider), attribute.String("outcome", outcome))
	m.logins.Add(ctx, 1, attrs)
	if err != nil {
		m.failures.Add(ctx, 1, attrs)
	}
	m.duration.Record(ctx, took.Seconds(), metric.WithAttributes(attribute.String("provider", provider)))
}

// store counts a shared-store event (see NewMetrics).
func (m *Metrics) store(ctx context.Context, provider, event string) {
	if m == nil {
		return
	}
	m.storeEvents.Add(ctx, 1, metric.WithAttributes(attribute.String("provider", provider), attribute.String("event", event)))
}
