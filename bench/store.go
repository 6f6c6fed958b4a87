package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// store is run 12: cached GetToken(kyc) on a demo with the redis store
// (a redis-server started here) against the same on a demo with the
// memory store, in the same run. A hit reads nothing from Redis, so the
// two should be alike.
func (o options) store(ctx context.Context, t *table, demo func() (*server, error)) error {
	const title = "gRPC GetToken(kyc), cached: redis store vs memory store"
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.row("12", title, "n/a (redis-server is not installed)", "", "", "")
		return nil
	}
	addr, stopRedis, err := startRedis(bin)
	if err != nil {
		return err
	}
	defer stopRedis()
	mem, err := demo()
	if err != nil {
		return err
	}
	defer mem.stop()
	shared, err := startServer(o.bin, "demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--replicas", "1", "--redis", addr)
	if err != nil {
		return err
	}
	defer shared.stop()
	req := &tokenvendv1.GetTokenRequest{Provider: "kyc"}
	for _, s := range []*server{mem, shared} {
		if err := firstToken(ctx, s.grpcAddr, req); err != nil {
			return err
		}
	}
	get := func(s *server) load {
		return grpcLoad(s.grpcAddr, "tokenvend.v1.TokenService.GetToken", req, o.connections)
	}
	call, floor, err := pairOn(ctx, shared.pid(), mem.pid(), get(shared), get(mem), o.concurrency, o.warm, o.duration, o.rounds)
	if err != nil {
		return err
	}
	t.pair("12", title, call, floor, true, 0.95, 0, 0)
	t.note("12: two demo processes, one with the redis store (a redis-server on loopback) and one without; each side's server CPU is its own process's.")
	if err := shared.alive(); err != nil {
		return err
	}
	return nil
}

// firstToken logs the server in, so the load measures cached calls.
func firstToken(ctx context.Context, addr string, req *tokenvendv1.GetTokenRequest) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = tokenvendv1.NewTokenServiceClient(conn).GetToken(ctx, req)
	return err
}

// startRedis runs redis-server on a free loopback port, persisting
// nothing, and returns its address and how to stop it.
func startRedis(bin string) (string, func(), error) {
	dir, err := os.MkdirTemp("", "tokenvend-bench-redis-*")
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		os.RemoveAll(dir)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, stop, nil
		}
	}
	stop()
	return "", nil, fmt.Errorf("redis-server on %s did not start: %s", addr, strings.TrimSpace(dir))
}
