package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/tokenvend/tokenvend/internal/store/redisstore"
	"github.com/tokenvend/tokenvend/internal/store/redistest"
	"github.com/tokenvend/tokenvend/internal/store/seal"
	"github.com/tokenvend/tokenvend/internal/token"
	"github.com/tokenvend/tokenvend/internal/token/storetest"
)

func sealer(t *testing.T, keys ...seal.Key) *seal.Sealer {
	t.Helper()
	if len(keys) == 0 {
		keys = []seal.Key{{ID: "k1", Secret: bytes.Repeat([]byte{1}, 32)}}
	}
	s, err := seal.New(keys)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// client is one replica's connection to addrs.
func client(t *testing.T, addrs []string, o redisstore.Options) *redisstore.Client {
	t.Helper()
	o.Addrs = addrs
	if o.Sealer == nil {
		o.Sealer = sealer(t)
	}
	c, err := redisstore.New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

var providers atomic.Int64

// pair returns a factory of two replicas' stores on addrs, each call with
// a provider of its own, so tests share a server without sharing state.
func pair(addrs []string, o redisstore.Options) storetest.New {
	return func(t *testing.T) (storetest.Shared, storetest.Shared) {
		name := fmt.Sprintf("p%d", providers.Add(1))
		return client(t, addrs, o).Provider(name), client(t, addrs, o).Provider(name)
	}
}

func TestConformanceStandalone(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	storetest.Run(t, pair([]string{srv.Addr}, redisstore.Options{}))
}

// TestConformanceCluster runs the same tests on a three-node Redis
// Cluster: every script touches the keys of one hash tag only.
func TestConformanceCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t)
	storetest.Run(t, pair(cl.Addrs(), redisstore.Options{}))
}

// raw is a plain client for looking at Redis as an operator would.
func raw(t *testing.T, addrs ...string) rueidis.Client {
	t.Helper()
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: addrs, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	return rc
}

var key = token.Key{Scope: "read:all", Subject: "user{1}"}

// TestLeaseRenewedPastTTL: a lease held for three times its TTL is still
// the holder's, and no one else gets it.
func TestLeaseRenewedPastTTL(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	o := redisstore.Options{LeaseTTL: 300 * time.Millisecond}
	a := client(t, []string{srv.Addr}, o).Provider("kyc")
	b := client(t, []string{srv.Addr}, o).Provider("kyc")
	l, err := a.Acquire(t.Context(), key)
	if err != nil || l == nil {
		t.Fatalf("Acquire: %v, %v", l, err)
	}
	defer l.Release()
	deadline := time.After(900 * time.Millisecond)
	for {
		// Asked again and again through the TTL: every answer is no.
		if lb, err := b.Acquire(t.Context(), key); err != nil || lb != nil {
			t.Fatalf("Acquire by another replica while renewed: got %v, %v; want nil", lb, err)
		}
		select {
		case <-l.Context().Done():
			t.Fatalf("lease context ended while renewed: %v", context.Cause(l.Context()))
		case <-deadline:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestLostLeaseIsFenced: the holder's Redis pauses (SIGSTOP) past the
// lease's TTL, so its renewals stop landing; its lease context ends; the
// lease expires and another replica takes it over and writes; the old
// holder's late write is refused by the fence.
func TestLostLeaseIsFenced(t *testing.T) {
	t.Parallel()
	shared := redistest.Start(t)
	o := redisstore.Options{LeaseTTL: 300 * time.Millisecond}
	oldc := client(t, []string{shared.Addr}, o)
	old := oldc.Provider("kyc")
	lease, err := old.Acquire(t.Context(), key)
	if err != nil || lease == nil {
		t.Fatalf("Acquire: %v, %v", lease, err)
	}
	defer lease.Release()

	// Cut the holder off: its renewals fail (here, by closing its
	// connections), so it must declare the lease lost within the TTL.
	oldc.Close()
	select {
	case <-lease.Context().Done():
	case <-time.After(2 * time.Second):
		t.Fatal("lease context did not end after renewals stopped")
	}

	next := client(t, []string{shared.Addr}, o).Provider("kyc")
	var nl *token.Lease
	for nl == nil {
		// The old lease expires in Redis within its TTL.
		if err := next.Wait(t.Context(), key, 0); err != nil {
			t.Fatal(err)
		}
		if nl, err = next.Acquire(t.Context(), key); err != nil {
			t.Fatal(err)
		}
	}
	defer nl.Release()
	if nl.Fence <= lease.Fence {
		t.Fatalf("fences: old %d, new %d; want the new one larger", lease.Fence, nl.Fence)
	}
	if err := next.Save(t.Context(), key, token.Stored{Token: storetest.Token("new"), Fence: nl.Fence}); err != nil {
		t.Fatal(err)
	}
	late := client(t, []string{shared.Addr}, o).Provider("kyc") // the old replica, reconnected
	if err := late.Save(t.Context(), key, token.Stored{Token: storetest.Token("late"), Fence: lease.Fence}); !errors.Is(err, token.ErrFenced) {
		t.Errorf("late Save with the lost lease's fence: got %v, want ErrFenced", err)
	}
	if got, err := late.Load(t.Context(), key); err != nil || got.Token == nil || got.Token.AccessToken != "new" {
		t.Errorf("Load: got %+v, %v; want the new holder's token", got.Token, err)
	}
}

// TestPausedRedisLosesLease: the Redis the holder talks to is paused
// (SIGSTOP) past the lease's TTL: the renewals cannot land, and the lease
// context ends rather than letting the login believe it still holds it.
func TestPausedRedisLosesLease(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a := client(t, []string{srv.Addr}, redisstore.Options{LeaseTTL: 300 * time.Millisecond}).Provider("kyc")
	l, err := a.Acquire(t.Context(), key)
	if err != nil || l == nil {
		t.Fatalf("Acquire: %v, %v", l, err)
	}
	defer l.Release()
	srv.Pause()
	defer srv.Resume()
	select {
	case <-l.Context().Done():
	case <-time.After(3 * time.Second):
		t.Fatal("lease context did not end while Redis was paused past the TTL")
	}
}

// TestHolderDiesTakenOver: a holder that vanishes without releasing (its
// process killed) leaves a lease that expires; the waiter is woken by the
// expiry's invalidation (its own fallback, a LeaseTTL of 10s, would be
// too late for the test) and takes over.
func TestHolderDiesTakenOver(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	o := redisstore.Options{LeaseTTL: 10 * time.Second}
	rc := raw(t, srv.Addr)
	// The dead holder's lease, as it left it: a key with a TTL that no
	// one renews.
	a := client(t, []string{srv.Addr}, o).Provider("kyc")
	l, err := a.Acquire(t.Context(), key)
	if err != nil || l == nil {
		t.Fatal(l, err)
	}
	keys := scan(t, rc)
	var leaseKey string
	for k := range keys {
		if strings.HasSuffix(k, ":lease") {
			leaseKey = k
		}
	}
	owner, _ := rc.Do(t.Context(), rc.B().Get().Key(leaseKey).Build()).ToString()
	l.Release()
	if err := rc.Do(t.Context(), rc.B().Set().Key(leaseKey).Value(owner).PxMilliseconds(500).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	b := client(t, []string{srv.Addr}, o).Provider("kyc")
	if lb, _ := b.Acquire(t.Context(), key); lb != nil {
		t.Fatal("Acquire while the dead holder's lease stands: got a lease")
	}
	start := time.Now()
	if err := b.Wait(t.Context(), key, 0); err != nil {
		t.Fatal(err)
	}
	lb, err := b.Acquire(t.Context(), key)
	if err != nil || lb == nil {
		t.Fatalf("Acquire after Wait: got %v, %v; want the lease", lb, err)
	}
	lb.Release()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("takeover after %s, want soon after the dead lease's expiry (500ms)", d)
	}
}

// scan returns every key and value (strings and hashes) in Redis.
func scan(t *testing.T, rc rueidis.Client) map[string]string {
	t.Helper()
	ctx := t.Context()
	out := map[string]string{}
	for _, node := range rc.Nodes() {
		var cursor uint64
		for {
			e, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Count(1000).Build()).AsScanEntry()
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range e.Elements {
				typ, _ := node.Do(ctx, node.B().Type().Key(k).Build()).ToString()
				switch typ {
				case "string":
					out[k], _ = node.Do(ctx, node.B().Get().Key(k).Build()).ToString()
				case "hash":
					m, _ := node.Do(ctx, node.B().Hgetall().Key(k).Build()).AsStrMap()
					out[k] = fmt.Sprint(m)
				default:
					out[k] = typ
				}
			}
			if cursor = e.Cursor; cursor == 0 {
				break
			}
		}
	}
	return out
}

// TestNothingInTheClear stores tokens and budgets on a cluster, then scans
// every key and value of every node: no access token, refresh token or
// header value appears, in any form that a grep would find.
func TestNothingInTheClear(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t)
	s := client(t, cl.Addrs(), redisstore.Options{}).Provider("ibanera")
	ctx := t.Context()
	var secrets []string
	for i := range 20 {
		tok := storetest.Token(fmt.Sprintf("AccessZq9-%02d", i))
		tok.RefreshToken = fmt.Sprintf("RefreshXy1-%02d", i)
		tok.Headers = map[string]string{"Authorization": "Bearer " + tok.AccessToken, "X-Api-Key": fmt.Sprintf("HeaderKw3-%02d", i)}
		secrets = append(secrets, tok.AccessToken, tok.RefreshToken, fmt.Sprintf("HeaderKw3-%02d", i))
		k := token.Key{Scope: fmt.Sprintf("scope-%d", i), Subject: fmt.Sprintf("sub:%d}", i)}
		l, err := s.Acquire(ctx, k)
		if err != nil || l == nil {
			t.Fatal(l, err)
		}
		if err := s.Save(ctx, k, token.Stored{Token: tok, Fence: l.Fence}); err != nil {
			t.Fatal(err)
		}
		l.Release()
	}
	if _, err := s.Settle(ctx, token.Settlement{Owner: "x", Now: time.Now(), Err: token.Rejected(token.ReasonCredentialsRejected, "BAD", "refused"), Backoff: time.Minute, MaxBackoff: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ChargeFailure(ctx, "fingerprint", 3); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReserveStep(ctx, 42, time.Minute); err != nil {
		t.Fatal(err)
	}
	all := scan(t, raw(t, cl.Addrs()...))
	tags := map[string]bool{}
	for k, v := range all {
		for _, sec := range secrets {
			// The digits of each value are distinct, so a fragment is enough.
			frag := sec[:len(sec)-3]
			if strings.Contains(k, frag) || strings.Contains(v, frag) {
				t.Errorf("key %q or its value holds %q in the clear", k, frag)
			}
		}
		if !strings.HasPrefix(k, "{tokenvend:ibanera") {
			t.Errorf("key %q: want every key under the prefix and provider, in a hash tag", k)
		}
		tag := k[:strings.Index(k, "}")+1]
		tags[tag] = true
	}
	// 20 credentials (tok, lease gone, fence each) and the provider's tag.
	if len(all) < 20*2+3 {
		t.Errorf("keys: got %d, want at least %d: %v", len(all), 20*2+3, all)
	}
	if len(tags) != 21 {
		t.Errorf("hash tags: got %d, want 21 (one per credential, one for the provider)", len(tags))
	}
}

// TestKeyEscaping: parts holding ':' or '}' cannot collide or move the
// hash tag.
func TestKeyEscaping(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := client(t, []string{srv.Addr}, redisstore.Options{Prefix: "tv"}).Provider("kyc")
	ctx := t.Context()
	a, b := token.Key{Scope: "a:b", Subject: "c"}, token.Key{Scope: "a", Subject: "b:c"}
	for i, k := range []token.Key{a, b, {Scope: "}x{", Subject: "%7D"}} {
		if err := s.Save(ctx, k, token.Stored{Token: storetest.Token(fmt.Sprint("t", i)), Fence: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for i, k := range []token.Key{a, b, {Scope: "}x{", Subject: "%7D"}} {
		got, err := s.Load(ctx, k)
		if err != nil || got.Token == nil || got.Token.AccessToken != fmt.Sprint("t", i) {
			t.Errorf("Load(%+v): got %+v, %v; want t%d", k, got.Token, err, i)
		}
	}
	keyRE := regexp.MustCompile(`^\{tv:kyc:[A-Za-z0-9_.%-]*:[A-Za-z0-9_.%-]*\}:tok$`)
	for k := range scan(t, raw(t, srv.Addr)) {
		if !keyRE.MatchString(k) {
			t.Errorf("key %q: want {tv:kyc:<escaped scope>:<escaped subject>}:tok", k)
		}
	}
}

// commands counts the GET calls Redis has executed (INFO commandstats).
func commands(t *testing.T, rc rueidis.Client, cmd string) int {
	t.Helper()
	info, err := rc.Do(t.Context(), rc.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`cmdstat_` + cmd + `:calls=(\d+)`).FindStringSubmatch(info)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestClientSideCache: a token read once is read again without a round
// trip; a write by another replica invalidates it, and the next read
// sees the new token.
func TestClientSideCache(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rc := raw(t, srv.Addr)
	a := client(t, []string{srv.Addr}, redisstore.Options{}).Provider("kyc")
	b := client(t, []string{srv.Addr}, redisstore.Options{}).Provider("kyc")
	ctx := t.Context()
	if err := b.Save(ctx, key, token.Stored{Token: storetest.Token("one"), Fence: 1}); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Load(ctx, key); err != nil || got.Token == nil || got.Token.AccessToken != "one" {
		t.Fatalf("first Load: got %+v, %v", got.Token, err)
	}
	before := commands(t, rc, "get")
	for range 100 {
		if got, err := a.Load(ctx, key); err != nil || got.Token.AccessToken != "one" {
			t.Fatalf("cached Load: got %+v, %v", got.Token, err)
		}
	}
	if n := commands(t, rc, "get") - before; n != 0 {
		t.Errorf("GETs executed by Redis for 100 cached Loads: got %d, want 0", n)
	}
	// Another replica writes: the invalidation reaches a's cache, and
	// Wait (woken by it) returns; the next Load has the new token.
	waited := make(chan error, 1)
	l, _ := b.Acquire(ctx, key)
	go func() { waited <- a.Wait(ctx, key, 1) }()
	if err := b.Save(ctx, key, token.Stored{Token: storetest.Token("two"), Fence: l.Fence}); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	l.Release()
	if got, err := a.Load(ctx, key); err != nil || got.Token == nil || got.Token.AccessToken != "two" {
		t.Errorf("Load after another replica's write: got %+v, %v; want two", got.Token, err)
	}
}

// TestUnopenableIsMiss: a token sealed by a key no longer configured, or
// moved to another key, or tampered with, is a miss, not an error.
func TestUnopenableIsMiss(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rc := raw(t, srv.Addr)
	ctx := t.Context()
	oldKey := seal.Key{ID: "2026-06", Secret: bytes.Repeat([]byte{1}, 32)}
	newKey := seal.Key{ID: "2026-12", Secret: bytes.Repeat([]byte{2}, 32)}
	byOld := client(t, []string{srv.Addr}, redisstore.Options{Sealer: sealer(t, oldKey)}).Provider("kyc")
	if err := byOld.Save(ctx, key, token.Stored{Token: storetest.Token("old"), Fence: 1}); err != nil {
		t.Fatal(err)
	}
	// Rotation: a replica with both keys opens it; one with the new key
	// only finds a miss.
	both := client(t, []string{srv.Addr}, redisstore.Options{Sealer: sealer(t, newKey, oldKey)}).Provider("kyc")
	if got, err := both.Load(ctx, key); err != nil || got.Token == nil || got.Token.AccessToken != "old" {
		t.Errorf("Load with the old key second: got %+v, %v; want the token", got.Token, err)
	}
	onlyNew := client(t, []string{srv.Addr}, redisstore.Options{Sealer: sealer(t, newKey)}).Provider("kyc")
	if got, err := onlyNew.Load(ctx, key); err != nil || got.Token != nil {
		t.Errorf("Load with the sealing key removed: got %+v, %v; want a miss, no error", got.Token, err)
	}
	// Moved: the value copied to another credential's key.
	var tokKey string
	for k := range scan(t, rc) {
		tokKey = k
	}
	v, _ := rc.Do(ctx, rc.B().Get().Key(tokKey).Build()).ToString()
	other := token.Key{Scope: "admin"}
	movedTo := strings.Replace(tokKey, "read%3Aall", "admin", 1)
	movedTo = strings.Replace(movedTo, "user%7B1%7D", "", 1)
	if err := rc.Do(ctx, rc.B().Set().Key(movedTo).Value(v).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if got, err := both.Load(ctx, other); err != nil || got.Token != nil {
		t.Errorf("Load of a value moved to %s: got %+v, %v; want a miss", movedTo, got.Token, err)
	}
	// Tampered: the fence rewritten.
	if err := rc.Do(ctx, rc.B().Set().Key(tokKey).Value("9"+v).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// A fresh replica: both's cached copy is invalidated asynchronously.
	fresh := client(t, []string{srv.Addr}, redisstore.Options{Sealer: sealer(t, newKey, oldKey)}).Provider("kyc")
	if got, err := fresh.Load(ctx, key); err != nil || got.Token != nil {
		t.Errorf("Load of a value with its fence rewritten: got %+v, %v; want a miss", got.Token, err)
	}
}

// TestRedisRestarted: Redis killed answers errors (never a stale token
// from the client-side cache, which is flushed with the connection); once
// it is back, empty, the same client reconnects and its scripts load
// again.
func TestRedisRestarted(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := client(t, []string{srv.Addr}, redisstore.Options{}).Provider("kyc")
	ctx := t.Context()
	l, err := s.Acquire(ctx, key)
	if err != nil || l == nil {
		t.Fatal(l, err)
	}
	l.Release()
	if err := s.Save(ctx, key, token.Stored{Token: storetest.Token("a"), Fence: l.Fence}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(ctx, key); err != nil || got.Token == nil {
		t.Fatalf("Load: %+v, %v", got, err)
	}
	srv.Kill()
	// Until the client notices the connection is gone, its cache may still
	// answer; once it has, a Load is an error, never the stale token.
	deadline := time.Now().Add(5 * time.Second)
	for {
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := s.Load(tctx, key)
		cancel()
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Load with Redis down: still answered from the cache 5s after the kill; want an error")
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv.Restart()
	var saveErr error
	for range 3 { // the first command may meet the old, broken connection
		if saveErr = s.Save(ctx, key, token.Stored{Token: storetest.Token("b"), Fence: 1}); saveErr == nil {
			break
		}
	}
	if saveErr != nil {
		t.Fatalf("Save after the restart: %v", saveErr)
	}
	if _, err := s.Admit(ctx, token.Attempt{Owner: "o", Now: time.Now(), TTL: time.Second}); err != nil {
		t.Errorf("Admit after the restart (scripts reloaded): %v", err)
	}
	if got, err := s.Load(ctx, key); err != nil || got.Token == nil || got.Token.AccessToken != "b" {
		t.Errorf("Load after the restart: got %+v, %v; want b", got.Token, err)
	}
}
