package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenvend/tokenvend/client"
	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/config"
)

// The commands for people: get, invalidate and providers talk to a running
// tokenvend over gRPC, through the Go client package.

// connFlags are how a command reaches the server.
type connFlags struct {
	addr, ca, cert, key, serverName, apiKeyFile string
	plaintext                                   bool
	timeout                                     time.Duration
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", config.DefaultGRPCAddr, "the tokenvend gRPC address")
	fs.StringVar(&c.ca, "ca", "", "TLS: the CA that signs the server's certificate (PEM); TLS is used when --ca or --cert is set")
	fs.StringVar(&c.cert, "cert", "", "mutual TLS: this client's certificate (PEM)")
	fs.StringVar(&c.key, "key", "", "mutual TLS: this client's key (PEM)")
	fs.StringVar(&c.serverName, "server-name", "", "TLS: the name to verify the server's certificate against (default: the host of --addr)")
	fs.StringVar(&c.apiKeyFile, "api-key-file", "", "a file holding this caller's API key, sent as x-api-key")
	fs.BoolVar(&c.plaintext, "plaintext", false, "allow a connection without TLS to an address beyond loopback")
	fs.DurationVar(&c.timeout, "timeout", 35*time.Second, "how long to wait for the answer")
}

// dialOptions builds the gRPC options: TLS when asked for, plaintext only
// to loopback unless --plaintext, and the API key on every call.
func (c *connFlags) dialOptions() ([]grpc.DialOption, error) {
	var opts []grpc.DialOption
	if c.ca != "" || c.cert != "" {
		tc := &tls.Config{ServerName: c.serverName, MinVersion: tls.VersionTLS12}
		if c.ca != "" {
			pem, err := os.ReadFile(c.ca)
			if err != nil {
				return nil, fmt.Errorf("--ca: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--ca: %s holds no PEM certificate", c.ca)
			}
		}
		if c.cert != "" || c.key != "" {
			pair, err := tls.LoadX509KeyPair(c.cert, c.key)
			if err != nil {
				return nil, fmt.Errorf("--cert and --key: %w", err)
			}
			tc.Certificates = []tls.Certificate{pair}
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	} else {
		if host, _, err := net.SplitHostPort(c.addr); !c.plaintext && (err != nil || !isLoopback(host)) {
			return nil, fmt.Errorf("--addr %s is beyond loopback: use TLS (--ca, --cert/--key), or --plaintext if the network encrypts for you", c.addr)
		}
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if c.apiKeyFile != "" {
		b, err := os.ReadFile(c.apiKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--api-key-file: %w", err)
		}
		key := strings.TrimRight(string(b), "\r\n")
		opts = append(opts, grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, "x-api-key", key), method, req, reply, cc, opts...)
		}))
	}
	return opts, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// statusError is an RPC's failure: the process exits with its gRPC code.
type statusError struct {
	code codes.Code
	err  error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

// exitCode is how the process ends for err: the gRPC code of a failed
// call (5 NOT_FOUND, 7 PERMISSION_DENIED, 14 UNAVAILABLE, ...), else 2.
func exitCode(err error) int {
	var se *statusError
	if errors.As(err, &se) {
		return int(se.code)
	}
	return 2
}

func rpcFailed(err error) error {
	if st, ok := status.FromError(err); ok && st.Code() != codes.OK {
		return &statusError{code: st.Code(), err: err}
	}
	return err
}

// oneArg parses args as flags around exactly one positional argument.
func oneArg(fs *flag.FlagSet, args []string, what string) (string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return "", err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != 1 {
		return "", fmt.Errorf("one %s is required", what)
	}
	return pos[0], nil
}

func getCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tokenvend get", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	scope := fs.String("scope", "", "the scope (default: the provider's)")
	subject := fs.String("subject", "", "the end user, for providers that mint per user")
	asCurl := fs.Bool("curl", false, "print curl -H arguments, one per line")
	asJSON := fs.Bool("json", false, "print the whole answer as JSON")
	provider, err := oneArg(fs, args, "PROVIDER")
	if err != nil {
		return err
	}
	c, err := newClient(cf)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	t, err := c.Token(ctx, client.Request{Provider: provider, Scope: *scope, Subject: *subject})
	if err != nil {
		return rpcFailed(err)
	}
	switch {
	case *asJSON:
		out := map[string]any{"access_token": t.AccessToken, "token_type": t.Type, "headers": t.Headers, "single_use": t.SingleUse}
		if !t.Expiry.IsZero() {
			out["expire_time"] = t.Expiry.UTC().Format(time.RFC3339)
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	case *asCurl:
		for _, k := range sortedKeys(t.Headers) {
			fmt.Fprintf(stdout, "-H %s\n", shellQuote(k+": "+t.Headers[k]))
		}
	default:
		for _, k := range sortedKeys(t.Headers) {
			fmt.Fprintf(stdout, "%s: %s\n", k, t.Headers[k])
		}
	}
	// The expiry goes to stderr, so stdout holds only the headers.
	switch {
	case t.SingleUse:
		fmt.Fprintf(stderr, "single use; expires %s\n", expiry(t.Expiry))
	default:
		fmt.Fprintf(stderr, "expires %s\n", expiry(t.Expiry))
	}
	return nil
}

func expiry(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return fmt.Sprintf("%s (in %s)", t.UTC().Format(time.RFC3339), time.Until(t).Round(time.Second))
}

func invalidateCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tokenvend invalidate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	scope := fs.String("scope", "", "the scope the token was vended for")
	subject := fs.String("subject", "", "the subject the token was vended for")
	tok := fs.String("token", "", "the access token the upstream refused (required)")
	provider, err := oneArg(fs, args, "PROVIDER")
	if err != nil {
		return err
	}
	if *tok == "" {
		return errors.New("--token is required")
	}
	c, err := newClient(cf)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	ok, err := c.Invalidate(ctx, client.Request{Provider: provider, Scope: *scope, Subject: *subject}, *tok)
	if err != nil {
		return rpcFailed(err)
	}
	if ok {
		fmt.Fprintln(stdout, "invalidated: a new login has started")
	} else {
		fmt.Fprintln(stdout, "not invalidated: not the current token, a single-use one, or reported moments ago")
	}
	return nil
}

func providersCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tokenvend providers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	if err := parse(fs, args, false); err != nil {
		return err
	}
	opts, err := cf.dialOptions()
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(cf.addr, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	list, err := tokenvendv1.NewTokenServiceClient(conn).ListProviders(ctx, &tokenvendv1.ListProvidersRequest{})
	if err != nil {
		return rpcFailed(err)
	}
	health := healthpb.NewHealthClient(conn)
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tKIND\tHEALTH\tCACHED\tDEFAULT SCOPE\tSCOPES")
	for _, p := range list.GetProviders() {
		h := "UNKNOWN"
		if resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: p.GetName()}); err == nil {
			h = resp.GetStatus().String()
		}
		cached := "no"
		if p.GetHasValidCredential() {
			cached = "yes"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", p.GetName(), p.GetKind(), h, cached,
			orDash(p.GetDefaultScope()), orDash(strings.Join(p.GetScopes(), ",")))
	}
	return w.Flush()
}

func newClient(cf connFlags) (*client.Client, error) {
	opts, err := cf.dialOptions()
	if err != nil {
		return nil, err
	}
	return client.New(cf.addr, opts...)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
