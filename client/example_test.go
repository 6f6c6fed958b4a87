package client_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/http"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenvend/tokenvend/client"
	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/demo"
)

// demoServer runs tokenvend on its demo (simulated upstreams) for the
// examples, as `make run` does, and returns its gRPC address, the demo's
// protected upstream endpoints and a stop function.
func demoServer() (addr string, upstreams map[string]string, stop func()) {
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, d.Config, app.Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	return a.GRPCAddr(), d.Upstreams, func() { cancel(); <-done; d.Close() }
}

func ExampleClient_Token() {
	addr, _, stop := demoServer()
	defer stop()

	c, err := client.New(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	t, err := c.Token(context.Background(), client.Request{Provider: "kyc"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(t.Type, t.Headers["Authorization"] == "Bearer "+t.AccessToken, t.SingleUse)
	// Output: Bearer true false
}

func ExampleClient_Transport() {
	addr, upstreams, stop := demoServer()
	defer stop()

	c, err := client.New(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// Every request gets the credential's headers; a 401 is reported and
	// the request retried once with a fresh credential.
	hc := &http.Client{Transport: c.Transport(client.Request{Provider: "insly"}, http.DefaultTransport)}
	resp, err := hc.Get(upstreams["insly"])
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode)
	// Output: 200
}

func ExampleClient_Invalidate() {
	addr, _, stop := demoServer()
	defer stop()

	c, err := client.New(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	r := client.Request{Provider: "kyc"}
	t, err := c.Token(context.Background(), r)
	if err != nil {
		log.Fatal(err)
	}
	// The upstream answered 401 to t: report it. The first report of the
	// current credential starts a new login.
	ok, err := c.Invalidate(context.Background(), r, t.AccessToken)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ok)
	// Output: true
}

func ExampleClient_PerRPCCredentials() {
	addr, _, stop := demoServer()
	defer stop()

	c, err := client.New(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// For a gRPC upstream: the credential's headers become metadata on
	// every call. On a TLS connection AllowInsecure is not needed.
	creds := c.PerRPCCredentials(client.Request{Provider: "ibanera"}, client.AllowInsecure())
	md, err := creds.GetRequestMetadata(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(md["authorization"]) > len("Bearer "), len(md["otp"]))
	// A real caller passes the credentials to its upstream's client:
	//	conn, err := grpc.NewClient(upstream, grpc.WithTransportCredentials(tlsCreds),
	//		grpc.WithPerRPCCredentials(c.PerRPCCredentials(client.Request{Provider: "x"})))

	// Output: true 6
}

func ExampleNew() {
	addr, _, stop := demoServer()
	defer stop()

	// Any grpc.DialOption applies; this package's Options go beside them.
	c, err := client.New(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), client.WithMargin(client.DefaultMargin))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("ready")
	// Output: ready
}
