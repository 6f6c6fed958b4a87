// Package telemetry sets up OpenTelemetry for the service: traces go where
// the standard OTEL_* variables say (nowhere unless OTEL_TRACES_EXPORTER is
// set), and metrics are served in Prometheus format from the service's own
// registry, so two services in one process (tests) never share state.
package telemetry

import (
	"context"
	"errors"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Telemetry is the service's tracing and metrics.
type Telemetry struct {
	Tracer trace.TracerProvider
	// Tracing is whether spans go anywhere: instrumentation whose only
	// output is spans can be left out when they don't.
	Tracing     bool
	Meter       metric.MeterProvider
	Propagators propagation.TextMapPropagator
	// Metrics serves /metrics.
	Metrics  http.Handler
	shutdown []func(context.Context) error
}

// Options override the environment, for tests.
type Options struct {
	// SpanExporter, when set, receives every span synchronously,
	// whatever OTEL_* says.
	SpanExporter sdktrace.SpanExporter
}

// New sets up telemetry.
func New(ctx context.Context, o Options) (*Telemetry, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName("tokenvend")),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK(),
	)
	if err != nil {
		return nil, err
	}
	t := &Telemetry{
		Propagators: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
	}

	switch {
	case o.SpanExporter != nil:
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(o.SpanExporter), sdktrace.WithResource(res))
		t.Tracer, t.Tracing = tp, true
		t.shutdown = append(t.shutdown, tp.Shutdown)
	case os.Getenv("OTEL_TRACES_EXPORTER") == "" || os.Getenv("OTEL_SDK_DISABLED") == "true":
		t.Tracer = noop.NewTracerProvider()
	default:
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, err
		}
		if autoexport.IsNoneSpanExporter(exp) {
			t.Tracer = noop.NewTracerProvider()
			break
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
		t.Tracer, t.Tracing = tp, true
		t.shutdown = append(t.shutdown, tp.Shutdown)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, err
	}
	// No exemplars: the Prometheus text format /metrics serves cannot
	// carry them, and offering each measurement walks the call's context.
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res),
		sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter))
	t.Meter = mp
	t.shutdown = append(t.shutdown, mp.Shutdown)
	t.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return t, nil
}

// Shutdown flushes and stops the exporters.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for _, f := range t.shutdown {
		errs = append(errs, f(ctx))
	}
	return errors.Join(errs...)
}
