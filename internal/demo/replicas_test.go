package demo

import (
	"testing"
)

// TestReplicas: each replica gets its own ports, the same store, and the
// demo's simulators.
func TestReplicas(t *testing.T) {
	t.Parallel()
	d, err := Start("127.0.0.1:9090", "127.0.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	cfgs, err := d.Replicas(3, "127.0.0.1:6390")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, c := range cfgs {
		for _, addr := range []string{c.Server.GRPCAddr, c.Server.HTTPAddr, c.Server.ProxyAddr} {
			if seen[addr] {
				t.Errorf("replica %d: address %s is another's", i, addr)
			}
			seen[addr] = true
		}
		if got := c.Store.Redis.Addrs; len(got) != 1 || got[0] != "127.0.0.1:6390" {
			t.Errorf("replica %d: store addrs %v", i, got)
		}
		if len(c.Providers) != len(d.Config.Providers) {
			t.Errorf("replica %d: providers differ from the demo's", i)
		}
	}
	if cfgs[2].Server.GRPCAddr != "127.0.0.1:9092" || cfgs[2].Server.HTTPAddr != "127.0.0.1:8082" {
		t.Errorf("replica 2 listens on %s and %s, want 9092 and 8082", cfgs[2].Server.GRPCAddr, cfgs[2].Server.HTTPAddr)
	}
	if d.Config.Store.Redis.Enabled() {
		t.Error("the demo's own config was changed")
	}
}
