// Command tokenvend is the token broker: `serve` runs it from a config file,
// `check` validates a config, `demo` runs it against built-in simulators,
// and `identityx` enrols the IdentityX credentials a service cannot obtain
// unattended.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/demo"
)

const usage = `usage:
  tokenvend serve --config FILE [--watch-config]
                                     run the service; SIGHUP (or, with --watch-config,
                                     a change of the file) reloads the config
  tokenvend check --config FILE      validate a config; exit non-zero naming every bad field
  tokenvend demo [--grpc-addr A] [--http-addr A] [--token-lifetime D] [--replicas N --redis ADDR]
                                     run the service against built-in simulators (N replicas
                                     sharing the Redis at ADDR, on the ports given and the next)
  tokenvend identityx send-link|login|api-token ...
                                     enrol an IdentityX credential (prints the token)
  tokenvend get PROVIDER [--scope S] [--subject U] [--curl | --json] [connection flags]
                                     print a credential's headers (and, on stderr, its expiry)
  tokenvend invalidate PROVIDER --token T [--scope S] [--subject U] [connection flags]
                                     report a token the upstream refused
  tokenvend providers [connection flags]
                                     list the providers this caller may use, and their health
  connection flags: --addr HOST:PORT (127.0.0.1:9090), --ca FILE, --cert FILE --key FILE,
                    --server-name N, --api-key-file F, --plaintext, --timeout D
  get, invalidate and providers exit with the gRPC status code of a failed call
  (5 NOT_FOUND, 7 PERMISSION_DENIED, 14 UNAVAILABLE, ...); other errors exit 2.
`

func main() {
	tuneGC(os.Getenv)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "tokenvend:", err)
		}
		os.Exit(exitCode(err))
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("a command is required")
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	fs := flag.NewFlagSet("tokenvend "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch args[0] {
	case "serve":
		path := fs.String("config", "", "the config file")
		watch := fs.Bool("watch-config", false, "reload the config when the file's content changes (it is read every second)")
		if err := parse(fs, args[1:], true); err != nil {
			return err
		}
		r := newReloader(*path, *watch)
		defer r.stop()
		cfg, err := loadChecked(*path)
		if err != nil {
			return err
		}
		return serve(ctx, cfg, log, stderr, r)
	case "check":
		path := fs.String("config", "", "the config file")
		if err := parse(fs, args[1:], true); err != nil {
			return err
		}
		if _, err := loadChecked(*path); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: ok\n", *path)
		return nil
	case "demo":
		grpcAddr := fs.String("grpc-addr", config.DefaultGRPCAddr, "the gRPC listen address")
		httpAddr := fs.String("http-addr", config.DefaultHTTPAddr, "the HTTP listen address")
		lifetime := fs.Duration("token-lifetime", 0, "make the kyc simulator issue tokens this short-lived, to watch refreshes")
		replicas := fs.Int("replicas", 1, "run this many replicas, sharing the store at --redis")
		redisAddr := fs.String("redis", "", "the Redis (host:port) the replicas share")
		if err := parse(fs, args[1:], false); err != nil {
			return err
		}
		if *replicas < 1 || (*replicas > 1 && *redisAddr == "") {
			return errors.New("--replicas N needs N of at least 1, and --redis ADDR when N is more than 1")
		}
		d, err := demo.Start(*grpcAddr, *httpAddr)
		if err != nil {
			return err
		}
		defer d.Close()
		if *lifetime > 0 {
			d.SetKYCTokenLifetime(*lifetime)
		}
		for provider, url := range d.Upstreams {
			log.Info("demo upstream", "provider", provider, "protected_endpoint", url)
		}
		if *redisAddr == "" {
			return serve(ctx, d.Config, log, stderr, nil)
		}
		cfgs, err := d.Replicas(*replicas, *redisAddr)
		if err != nil {
			return err
		}
		return serveAll(ctx, cfgs, log, stderr)
	case "identityx":
		return identityxCommand(ctx, args[1:], stdout, stderr)
	case "get":
		return getCommand(ctx, args[1:], stdout, stderr)
	case "invalidate":
		return invalidateCommand(ctx, args[1:], stdout, stderr)
	case "providers":
		return providersCommand(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// parse parses flags; with needConfig, --config is required.
func parse(fs *flag.FlagSet, args []string, needConfig bool) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if f := fs.Lookup("config"); needConfig && f != nil && f.Value.String() == "" {
		return errors.New("--config FILE is required")
	}
	return nil
}

// loadChecked loads a config and validates every provider's keys.
func loadChecked(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if cfg != nil {
		err = errors.Join(err, app.Check(cfg))
	}
	if err != nil {
		return nil, fmt.Errorf("invalid config %s:\n%w", path, err)
	}
	return cfg, nil
}

// serve runs the service, reloading its config with r (if not nil). The audit lines share stderr with the log: every
// log line and every batch of audit lines is one Write call, and an
// *os.File holds its write lock for the whole of a Write, so lines never
// interleave.
// serveAll serves each config (the demo's replicas) until ctx ends or one
// of them fails, which stops the others.
func serveAll(ctx context.Context, cfgs []*config.Config, log *slog.Logger, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(cfgs))
	for i, cfg := range cfgs {
		go func() {
			err := serve(ctx, cfg, log.With("replica", i), stderr, nil)
			cancel()
			errc <- err
		}()
	}
	var errs []error
	for range cfgs {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

func serve(ctx context.Context, cfg *config.Config, log *slog.Logger, stderr io.Writer, r *reloader) error {
	a, err := app.New(ctx, cfg, app.Options{Log: log, Audit: stderr})
	if err != nil {
		return err
	}
	if r != nil {
		rctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { r.run(rctx, a, log); close(done) }()
		defer func() { stop(); <-done }()
	}
	return a.Serve(ctx)
}
