package demo

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"strconv"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/secret"
)

// Replicas returns the configs of n replicas of the demo that share the
// redis store at redisAddr: replica i listens on the demo's ports plus i
// (gRPC and HTTP) and on 127.0.0.1:818i for proxy mode, and every replica
// seals with one fresh key, so nothing outlives the run. All of them use
// d's simulators, so the upstreams see the fleet as one broker would
// appear to them.
func (d *Demo) Replicas(n int, redisAddr string) ([]*config.Config, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	store := config.Store{
		Redis:          config.Redis{Addrs: []string{redisAddr}, KeyPrefix: "tokenvend-demo"},
		EncryptionKeys: []config.EncryptionKey{{ID: "demo", Key: secret.Literal(base64.StdEncoding.EncodeToString(key))}},
	}
	var out []*config.Config
	for i := range n {
		c := *d.Config
		var err error
		if c.Server.GRPCAddr, err = plus(d.Config.Server.GRPCAddr, i); err != nil {
			return nil, fmt.Errorf("--grpc-addr: %w", err)
		}
		if c.Server.HTTPAddr, err = plus(d.Config.Server.HTTPAddr, i); err != nil {
			return nil, fmt.Errorf("--http-addr: %w", err)
		}
		c.Server.ProxyAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(8180+i))
		if _, port, _ := net.SplitHostPort(c.Server.HTTPAddr); port == "0" {
			c.Server.ProxyAddr = "127.0.0.1:0" // tests and the bench: free ports only
		}
		c.Store = store
		out = append(out, &c)
	}
	return out, nil
}

// plus is addr with its port moved up by i (a port 0 stays 0).
func plus(addr string, i int) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", err
	}
	if p == 0 {
		return addr, nil
	}
	return net.JoinHostPort(host, strconv.Itoa(p+i)), nil
}
