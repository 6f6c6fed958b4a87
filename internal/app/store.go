package app

import (
	"context"

	"go.opentelemetry.io/otel/metric"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/store/redisstore"
)

// connectStore starts connecting to the redis store in the background (a
// replica starts, and serves alone, while Redis cannot be reached) and
// returns each provider's share of it. When Redis answers again after an
// outage, every cached token is written back, the fence deciding.
func (a *App) connectStore(s config.Store, o Options) (func(name string) sharedStore, error) {
	ro, err := redisstore.FromConfig(s)
	if err != nil {
		return nil, err
	}
	ro.Log, ro.LeaseTTL = o.Log, o.StoreLeaseTTL
	a.store = redisstore.Connect(ro, func() {
		if g := a.gen.Load(); g != nil {
			go g.broker.WriteBack(context.Background())
		}
	})
	return func(name string) sharedStore { return a.store.Provider(name) }, nil
}

// storeGauge exports tokenvend_store_up: 1 while Redis answers, 0 while
// it does not (the replica serves alone meanwhile, and stays ready).
func (a *App) storeGauge() error {
	m := a.tel.Meter.Meter("tokenvend")
	up, err := m.Int64ObservableGauge("tokenvend.store.up",
		metric.WithDescription("1 while the shared store (Redis) answers, 0 while this replica serves alone."))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, ob metric.Observer) error {
		v := int64(0)
		if a.store != nil && a.store.Up() {
			v = 1
		}
		ob.ObserveInt64(up, v)
		return nil
	}, up)
	return err
}
