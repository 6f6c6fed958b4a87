package token

import (
	"context"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// TestCacheAdopt: a Cache built with new options over the same Source takes
// over the old one's valid tokens (no login), refreshes them on its own
// schedule, and keeps a rejection hold.
func TestCacheAdopt(t *testing.T) {
	t.Parallel()
	t.Run("tokens", func(t *testing.T) {
		t.Parallel()
		old, src, clk := newTestCache(t, nil)
		tokA, _ := mustGet(t, old, Key{Scope: "a"}, 0)
		mustGet(t, old, Key{Scope: "b"}, 0)
		clk.Advance(50 * time.Minute) // 10m left: before the old 1m refresh, after a 15m one

		c := NewCache(src, Options{Now: clk.Now, RefreshBefore: 15 * time.Minute, MinValid: 10 * time.Second, RetryBase: time.Millisecond})
		c.Adopt(old)
		got, out := mustGet(t, c, Key{Scope: "a"}, 0)
		if got != tokA || !out.Hit {
			t.Fatalf("after Adopt: got %s (hit %v), want the old cache's %s as a hit", got.AccessToken, out.Hit, tokA.AccessToken)
		}
		// 10m left is inside the new 15m refresh_before: that Get started
		// a background refresh, which the old 1m would not have.
		waitFor(t, "the refresh under the new options", func() bool { return src.calls() == 3 })
		if r := src.req(t, 3); r.Previous != tokA {
			t.Errorf("refresh: Previous is %v, want the adopted token", r.Previous)
		}
		if !c.State().Valid {
			t.Error("State after Adopt: not Valid")
		}
	})
	t.Run("hold", func(t *testing.T) {
		t.Parallel()
		old, src, clk := newTestCache(t, nil)
		src.setAnswer(func(int, Request) (*Token, error) { return nil, rejected() })
		if _, _, err := old.Get(context.Background(), Key{}, 0); err == nil {
			t.Fatal("Get with rejected credentials: got a token")
		}
		var held []bool
		c := NewCache(src, Options{Now: clk.Now, RejectBackoff: time.Minute, OnHold: func(h bool) { held = append(held, h) }})
		c.Adopt(old)
		_, out, err := c.Get(context.Background(), Key{}, 0)
		if err == nil || !out.Held {
			t.Fatalf("after Adopt: got %v (held %v), want the old hold's rejection without a login", err, out.Held)
		}
		if got := src.calls(); got != 1 {
			t.Errorf("logins: got %d, want 1 (the hold carried over)", got)
		}
		if c.State().Held == nil {
			t.Error("State after Adopt: not Held")
		}
		if len(held) != 0 {
			t.Errorf("OnHold: got %v, want no call (the hold is not new)", held)
		}
	})
}

// TestCacheClose: a closed Cache forgets its tokens and leaves the metrics.
func TestCacheClose(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	m, err := NewMetrics(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test"))
	if err != nil {
		t.Fatal(err)
	}
	c, src, _ := newTestCache(t, func(o *Options) { o.Metrics = m })
	mustGet(t, c, Key{}, 0)
	lookups := func() int {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(ctx, &rm); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, sm := range rm.ScopeMetrics {
			for _, mt := range sm.Metrics {
				if s, ok := mt.Data.(metricdata.Sum[int64]); ok && mt.Name == "tokenvend.cache.lookups" {
					n += len(s.DataPoints)
				}
			}
		}
		return n
	}
	if got := lookups(); got != 1 {
		t.Fatalf("lookup series before Close: got %d, want 1", got)
	}
	c.Close()
	if c.State().Valid {
		t.Error("State after Close: Valid, want no token kept")
	}
	if got := lookups(); got != 0 {
		t.Errorf("lookup series after Close: got %d, want 0", got)
	}
	// A Get still in flight on a closed cache works; it just logs in.
	mustGet(t, c, Key{}, 0)
	if got := src.calls(); got != 2 {
		t.Errorf("logins: got %d, want 2 (the token was dropped)", got)
	}
}
