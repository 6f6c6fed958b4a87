// Package redisstore keeps token.Cache's shared state in Redis (7 or
// newer, or Valkey 7.2 or newer, standalone or Cluster), so that every
// replica acts as one broker: one lease per key decides who logs in, a
// fence keeps a replica that lost its lease from overwriting a newer
// token, and the login budgets change atomically in Lua scripts. Every
// credential is sealed (package seal) before it leaves the process.
//
// Token reads use rueidis' server-assisted client-side caching: a token
// read once is served from the client's memory until Redis says it
// changed, and that same invalidation wakes the replicas waiting for it
// and tells the replica's Cache (token.Watchable), which reads the token
// again before it serves its own copy.
//
// Key layout, for prefix P, provider N, and a key's scope S and subject U
// (each part escaped, see part):
//
//	{P:N:S:U}:tok      "<fence>:<sealed token>", expiring with the token
//	{P:N:S:U}:lease    the lease holder's random owner id, with a TTL
//	{P:N:S:U}:fence    the fence counter
//	{P:N}:budget       hash: the rejection held (err, until, strikes) and
//	                   the exclusive slot (slot, slotto)
//	{P:N}:fails        hash: ibanera's failed logins (creds, n)
//	{P:N}:totp:<step>  the owner of a TOTP step, for two steps
//
// The braces are Redis Cluster hash tags: one credential's keys, and one
// provider's, each live on one node, where one script can change them.
package redisstore

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"weak"

	"github.com/redis/rueidis"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/store/seal"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Options configure a Client.
type Options struct {
	// Addrs: one for a standalone Redis, several seeds for a Cluster.
	Addrs              []string
	Username, Password string
	// TLS, when not nil, makes connections TLS.
	TLS *tls.Config
	// Prefix starts every key (config.DefaultKeyPrefix when empty).
	Prefix string
	// Sealer seals every stored token. Required.
	Sealer *seal.Sealer
	// LeaseTTL is how long a lease outlives its holder (10s). It is
	// renewed every third of it, so a replica that dies mid-login is
	// taken over within LeaseTTL.
	LeaseTTL time.Duration
	// CacheTTL bounds how long a token read stays in the client-side
	// cache (1h; never past the key's own TTL). Invalidation keeps it
	// coherent meanwhile.
	CacheTTL time.Duration
	// Log receives store problems; never a token or a secret.
	Log *slog.Logger
}

// FromConfig builds Options from the store section (already validated).
func FromConfig(s config.Store) (Options, error) {
	o := Options{Addrs: s.Redis.Addrs, Username: s.Redis.Username, Prefix: s.Redis.Prefix()}
	if !s.Redis.Password.IsZero() {
		pw, err := s.Redis.Password.Value()
		if err != nil {
			return o, config.Errorf("store.redis.password", "%v", err)
		}
		o.Password = pw
	}
	if s.Redis.TLS.Enabled() {
		t, err := s.Redis.TLS.LoadTLS()
		if err != nil {
			return o, err
		}
		o.TLS = t
	}
	var keys []seal.Key
	for i, k := range s.EncryptionKeys {
		b, err := k.Bytes()
		if err != nil {
			return o, config.Errorf(fmt.Sprintf("store.encryption_keys[%d].key", i), "%v", err)
		}
		keys = append(keys, seal.Key{ID: k.ID, Secret: b})
	}
	sealer, err := seal.New(keys)
	if err != nil {
		return o, config.Errorf("store.encryption_keys", "%v", err)
	}
	o.Sealer = sealer
	return o, nil
}

// Client is one replica's connection to the shared store. Provider gives
// the token.Store of one provider.
type Client struct {
	rc     rueidis.Client
	o      Options
	prefix string
	// id names this client as the owner of TOTP steps.
	id string

	mu sync.Mutex
	// waiters are the channels of Wait calls, by the Redis key they
	// watch; an invalidation of the key signals them.
	waiters map[string]map[chan struct{}]struct{}
	// watchers are the Caches told of changes to their tokens, by
	// provider tag ("P:N", escaped). Held weakly: a Cache a reload
	// replaced is not kept alive by them.
	watchers map[string][]weak.Pointer[token.Watcher]
}

// New connects to Redis. It fails when no address can be reached.
func New(o Options) (*Client, error) {
	if o.Sealer == nil {
		return nil, errors.New("redisstore: a Sealer is required")
	}
	if o.Prefix == "" {
		o.Prefix = config.DefaultKeyPrefix
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 10 * time.Second
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = time.Hour
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	c := &Client{o: o, prefix: part(o.Prefix), id: randomID(), waiters: map[string]map[chan struct{}]struct{}{},
		watchers: map[string][]weak.Pointer[token.Watcher]{}}
	rc, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:     o.Addrs,
		Username:        o.Username,
		Password:        o.Password,
		TLSConfig:       o.TLS,
		ClientName:      "tokenvend",
		OnInvalidations: c.invalidated,
	})
	if err != nil {
		return nil, fmt.Errorf("redisstore: cannot connect to %s: %w", strings.Join(o.Addrs, ", "), err)
	}
	c.rc = rc
	return c, nil
}

// Close closes the connections.
func (c *Client) Close() { c.rc.Close() }

// Provider returns the store of one provider's state.
func (c *Client) Provider(name string) *Store {
	return &Store{c: c, tag: c.prefix + ":" + part(name)}
}

// invalidated wakes the waiters of invalidated keys and tells the Caches
// whose tokens they are; nil (the connection was lost, or Redis flushed:
// every cached key is dropped, and changes meanwhile go unheard) wakes
// them all and tells every Cache to check its copies. Redis sends an
// invalidation for a key this client read through its cache (Load, Wait)
// when anyone writes it, this replica included, or it is removed or
// expires. It runs on the connection's reader: it must be quick.
func (c *Client) invalidated(msgs []rueidis.RedisMessage) {
	type change struct {
		w *token.Watcher
		k token.Key
	}
	var changes []change
	var lost []*token.Watcher
	c.mu.Lock()
	wake := func(set map[chan struct{}]struct{}) {
		for ch := range set {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	if msgs == nil {
		for _, set := range c.waiters {
			wake(set)
		}
		for tag := range c.watchers {
			lost = append(lost, c.watchersLocked(tag)...)
		}
	}
	for _, m := range msgs {
		key, err := m.ToString()
		if err != nil {
			continue
		}
		wake(c.waiters[key])
		if tag, k, ok := tokKey(key); ok {
			for _, w := range c.watchersLocked(tag) {
				changes = append(changes, change{w, k})
			}
		}
	}
	c.mu.Unlock()
	for _, w := range lost {
		w.Lost()
	}
	for _, ch := range changes {
		ch.w.Changed(ch.k)
	}
}

// watchersLocked returns tag's live watchers, forgetting collected ones.
// c.mu must be held.
func (c *Client) watchersLocked(tag string) []*token.Watcher {
	var live []*token.Watcher
	ws := c.watchers[tag][:0]
	for _, p := range c.watchers[tag] {
		if w := p.Value(); w != nil {
			live = append(live, w)
			ws = append(ws, p)
		}
	}
	if len(ws) == 0 {
		delete(c.watchers, tag)
	} else {
		c.watchers[tag] = ws
	}
	return live
}

// watchTokens registers w for the tokens of provider tag.
func (c *Client) watchTokens(tag string, w *token.Watcher) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := weak.Make(w)
	if !slices.Contains(c.watchers[tag], p) {
		c.watchers[tag] = append(c.watchers[tag], p)
	}
}

// watch registers ch to be signalled when any of keys changes; the
// returned func unregisters it.
func (c *Client) watch(ch chan struct{}, keys ...string) func() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		if c.waiters[k] == nil {
			c.waiters[k] = map[chan struct{}]struct{}{}
		}
		c.waiters[k][ch] = struct{}{}
	}
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, k := range keys {
			delete(c.waiters[k], ch)
			if len(c.waiters[k]) == 0 {
				delete(c.waiters, k)
			}
		}
	}
}

// Store is one provider's shared state: a token.Store, and ibanera's
// token.Failures and token.Steps.
type Store struct {
	c   *Client
	tag string // "P:N", escaped
}

var (
	_ token.Store     = (*Store)(nil)
	_ token.Failures  = (*Store)(nil)
	_ token.Steps     = (*Store)(nil)
	_ token.Watchable = (*Store)(nil)
)

// Watch tells w when a token of this provider that this client has read
// changes in Redis, and when changes may have been missed (see
// Client.invalidated). w is held weakly.
func (s *Store) Watch(w *token.Watcher) { s.c.watchTokens(s.tag, w) }

// part escapes one part of a key: letters, digits, '_', '.' and '-' stay,
// every other byte becomes %XX, so no part holds the ':' that separates
// parts or a brace that would move the hash tag.
func part(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9', ch == '_', ch == '.', ch == '-':
			b.WriteByte(ch)
		default:
			fmt.Fprintf(&b, "%%%02X", ch)
		}
	}
	return b.String()
}

// unpart undoes part, strictly: ok is false for anything part would not
// have written.
func unpart(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9', ch == '_', ch == '.', ch == '-':
			b.WriteByte(ch)
		case ch == '%' && i+2 < len(s):
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			raw := string([]byte{byte(v)})
			if err != nil || s[i+1:i+3] != strings.ToUpper(s[i+1:i+3]) || part(raw) == raw {
				return "", false // part writes these bytes as they are
			}
			b.WriteString(raw)
			i += 2
		default:
			return "", false
		}
	}
	return b.String(), true
}

// tokKey maps a Redis key back to the provider tag and the token.Key of
// the token it holds (see Store.keys); ok is false for any other key.
func tokKey(key string) (tag string, k token.Key, ok bool) {
	inner, found := strings.CutSuffix(key, "}:tok")
	if !found || !strings.HasPrefix(inner, "{") {
		return "", token.Key{}, false
	}
	parts := strings.Split(inner[1:], ":")
	if len(parts) != 4 {
		return "", token.Key{}, false
	}
	scope, ok1 := unpart(parts[2])
	subject, ok2 := unpart(parts[3])
	if !ok1 || !ok2 {
		return "", token.Key{}, false
	}
	return parts[0] + ":" + parts[1], token.Key{Scope: scope, Subject: subject}, true
}

// keys names the Redis keys of one credential.
type keys struct{ tok, lease, fence string }

func (s *Store) keys(k token.Key) keys {
	base := "{" + s.tag + ":" + part(k.Scope) + ":" + part(k.Subject) + "}:"
	return keys{tok: base + "tok", lease: base + "lease", fence: base + "fence"}
}

func (s *Store) providerKey(name string) string { return "{" + s.tag + "}:" + name }

// wire is a Token as sealed: every field, the credential ones included.
type wire struct {
	AccessToken  string            `json:"a,omitempty"`
	Type         string            `json:"t,omitempty"`
	Headers      map[string]string `json:"h,omitempty"`
	IssuedAt     time.Time         `json:"i"`
	Expiry       time.Time         `json:"e"`
	RefreshToken string            `json:"r,omitempty"`
	CheckEvery   time.Duration     `json:"c,omitempty"`
}

// where is the additional data a token is sealed with: its key and fence,
// so neither a value copied elsewhere nor a rewritten fence opens.
func where(key string, fence uint64) string { return key + "\x00" + strconv.FormatUint(fence, 10) }

// Load reads k's token through the client-side cache: after the first
// read, until another replica writes it, no round trip.
func (s *Store) Load(ctx context.Context, k token.Key) (token.Stored, error) {
	key := s.keys(k).tok
	v, err := s.c.rc.DoCache(ctx, s.c.rc.B().Get().Key(key).Cache(), s.c.o.CacheTTL).ToString()
	if rueidis.IsRedisNil(err) {
		return token.Stored{}, nil
	}
	if err != nil {
		return token.Stored{}, fmt.Errorf("redisstore: load: %w", err)
	}
	return s.open(ctx, key, v), nil
}

// open decodes a stored value; one that cannot be opened is a miss.
func (s *Store) open(ctx context.Context, key, v string) token.Stored {
	fs, sealed, ok := strings.Cut(v, ":")
	fence, err := strconv.ParseUint(fs, 10, 64)
	if !ok || err != nil {
		s.c.o.Log.WarnContext(ctx, "stored token is not a fenced value: treated as missing", "key", key)
		return token.Stored{}
	}
	plain, err := s.c.o.Sealer.Open([]byte(sealed), where(key, fence))
	if err != nil {
		// An unknown key id is expected after a rotation; either way the
		// token is logged in again, never an error for a caller.
		s.c.o.Log.WarnContext(ctx, "stored token cannot be opened: treated as missing", "key", key, "error", err.Error())
		return token.Stored{}
	}
	var w wire
	if err := json.Unmarshal(plain, &w); err != nil {
		s.c.o.Log.WarnContext(ctx, "stored token does not decode: treated as missing", "key", key)
		return token.Stored{}
	}
	return token.Stored{Fence: fence, Token: &token.Token{
		AccessToken: w.AccessToken, Type: w.Type, Headers: w.Headers,
		IssuedAt: w.IssuedAt, Expiry: w.Expiry, RefreshToken: w.RefreshToken, CheckEvery: w.CheckEvery,
	}}
}

// Save seals and writes k's token with its fence, expiring with it,
// unless the stored token's fence is newer (token.ErrFenced).
func (s *Store) Save(ctx context.Context, k token.Key, st token.Stored) error {
	t := st.Token
	if t == nil {
		return errors.New("redisstore: Save of no token")
	}
	plain, err := json.Marshal(wire{
		AccessToken: t.AccessToken, Type: t.Type, Headers: t.Headers,
		IssuedAt: t.IssuedAt, Expiry: t.Expiry, RefreshToken: t.RefreshToken, CheckEvery: t.CheckEvery,
	})
	if err != nil {
		return err
	}
	key := s.keys(k).tok
	sealed := s.c.o.Sealer.Seal(plain, where(key, st.Fence))
	at := "0"
	if !t.Expiry.IsZero() {
		// At least 1: 0 means "never", and a token already expired is
		// stored expired, which Redis drops at once.
		at = strconv.FormatInt(max(t.Expiry.UnixMilli(), 1), 10)
	}
	n, err := save.Exec(ctx, s.c.rc, []string{key}, []string{strconv.FormatUint(st.Fence, 10), string(sealed), at}).AsInt64()
	switch {
	case err != nil:
		return fmt.Errorf("redisstore: save: %w", err)
	case n == 0:
		return token.ErrFenced
	}
	return nil
}

// Acquire takes k's lease with a fence, and renews it every third of
// LeaseTTL until it is released, ctx ends, or it is lost: another owner
// holds the key, or no renewal succeeded for LeaseTTL (the key may have
// expired meanwhile). The lease's context ends at once when it is lost.
func (s *Store) Acquire(ctx context.Context, k token.Key) (*token.Lease, error) {
	ks := s.keys(k)
	owner := randomID()
	ttl := strconv.FormatInt(s.c.o.LeaseTTL.Milliseconds(), 10)
	vals, err := acquire.Exec(ctx, s.c.rc, []string{ks.lease, ks.fence, ks.tok}, []string{owner, ttl}).ToArray()
	if err != nil {
		return nil, fmt.Errorf("redisstore: acquire: %w", err)
	}
	if len(vals) != 2 {
		return nil, fmt.Errorf("redisstore: acquire: %d values, want 2", len(vals))
	}
	fence, err := vals[0].AsInt64()
	if err != nil {
		return nil, fmt.Errorf("redisstore: acquire: %w", err)
	}
	if fence == 0 {
		return nil, nil
	}
	var stored token.Stored
	if v, _ := vals[1].ToString(); v != "" {
		stored = s.open(ctx, ks.tok, v)
	}
	lctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go s.renew(lctx, cancel, stopped, ks.lease, owner, ttl)
	var once sync.Once
	rel := func() {
		once.Do(func() {
			cancel()
			<-stopped // no renewal after the release
			// The lease's own context has ended: release on one that
			// outlives it, bounded.
			rctx, done := context.WithTimeout(context.WithoutCancel(ctx), s.c.o.LeaseTTL)
			defer done()
			if err := release.Exec(rctx, s.c.rc, []string{ks.lease}, []string{owner}).Error(); err != nil {
				s.c.o.Log.Warn("lease release failed: it expires by itself", "key", ks.lease, "error", err.Error())
			}
		})
	}
	// However the lease's context ends (released, lost, or ctx ended),
	// the key is given up rather than left to expire.
	context.AfterFunc(lctx, rel)
	return token.NewLease(lctx, uint64(fence), stored, rel), nil
}

// renew keeps a lease alive until ctx ends, and cancels it once lost.
func (s *Store) renew(ctx context.Context, cancel context.CancelFunc, stopped chan<- struct{}, key, owner, ttl string) {
	defer close(stopped)
	every := s.c.o.LeaseTTL / 3
	t := time.NewTicker(every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, done := context.WithTimeout(ctx, every)
		n, err := renew.Exec(rctx, s.c.rc, []string{key}, []string{owner, ttl}).AsInt64()
		done()
		switch {
		case err == nil && n == 1:
			last = time.Now()
		case err == nil:
			s.c.o.Log.Warn("lease lost: another replica holds it", "key", key)
			cancel()
			return
		case ctx.Err() != nil:
			return
		case time.Since(last) >= s.c.o.LeaseTTL-every:
			// The lease may expire before the next renewal could land.
			s.c.o.Log.Warn("lease lost: it could not be renewed", "key", key, "error", err.Error())
			cancel()
			return
		}
	}
}

// Wait returns when k's token has a fence other than seen or its lease is
// free. It reads both through the client-side cache, which tracks them:
// a write, a release or an expiry invalidates them and wakes it. A
// missed invalidation (a reconnect) costs at most LeaseTTL.
func (s *Store) Wait(ctx context.Context, k token.Key, seen uint64) error {
	ks := s.keys(k)
	ch := make(chan struct{}, 1)
	defer s.c.watch(ch, ks.tok, ks.lease)()
	for {
		// Registered before reading: a change after the read is signalled.
		done, err := s.settled(ctx, ks, seen)
		if err != nil || done {
			return err
		}
		t := time.NewTimer(s.c.o.LeaseTTL)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		t.Stop()
	}
}

// settled reports whether a Wait for ks is over. The cached reads
// register the keys for invalidation; a cached answer that the wait is
// over may be stale (its invalidation still on the way), so it is
// confirmed by reading Redis itself.
func (s *Store) settled(ctx context.Context, ks keys, seen uint64) (bool, error) {
	rc := s.c.rc
	res := rc.DoMultiCache(ctx,
		rueidis.CT(rc.B().Get().Key(ks.tok).Cache(), s.c.o.CacheTTL),
		rueidis.CT(rc.B().Get().Key(ks.lease).Cache(), s.c.o.CacheTTL),
	)
	done, err := over(res, seen)
	if err != nil || !done {
		return false, err
	}
	return over(rc.DoMulti(ctx, rc.B().Get().Key(ks.tok).Build(), rc.B().Get().Key(ks.lease).Build()), seen)
}

// over decodes the answers of GET tok, GET lease: is the token's fence
// other than seen, or the lease free?
func over(res []rueidis.RedisResult, seen uint64) (bool, error) {
	tok, err := res[0].ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		return false, fmt.Errorf("redisstore: wait: %w", err)
	}
	fence := uint64(0)
	if err == nil {
		fs, _, _ := strings.Cut(tok, ":")
		fence, _ = strconv.ParseUint(fs, 10, 64)
	}
	_, err = res[1].ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		return false, fmt.Errorf("redisstore: wait: %w", err)
	}
	return fence != seen || rueidis.IsRedisNil(err), nil
}

// Admit runs the admit script on the provider's budget.
func (s *Store) Admit(ctx context.Context, a token.Attempt) (token.Admission, error) {
	excl := "0"
	if a.Exclusive {
		excl = "1"
	}
	vals, err := admit.Exec(ctx, s.c.rc, []string{s.providerKey("budget")},
		[]string{a.Owner, excl, ms(a.Now), strconv.FormatInt(a.TTL.Milliseconds(), 10)}).ToArray()
	if err != nil {
		return token.Admission{}, fmt.Errorf("redisstore: admit: %w", err)
	}
	if len(vals) != 5 {
		return token.Admission{}, fmt.Errorf("redisstore: admit: %d values, want 5", len(vals))
	}
	ok, _ := vals[0].AsInt64()
	h, err := hold(vals[1], vals[2], vals[3])
	if err != nil {
		return token.Admission{}, err
	}
	busy, _ := vals[4].AsInt64()
	h.Busy = busy == 1
	if ok == 1 {
		return token.Admission{OK: true}, nil
	}
	return token.Admission{Hold: h}, nil
}

// Settle runs the settle script on the provider's budget.
func (s *Store) Settle(ctx context.Context, st token.Settlement) (token.Hold, error) {
	outcome, held, floor := "other", "", time.Duration(0)
	var e *token.Error
	switch {
	case st.Err == nil:
		outcome = "ok"
	case errors.As(st.Err, &e) && e.Kind == token.KindRejected:
		outcome, floor = "rejected", e.Hold
		b, err := json.Marshal(heldError{Kind: e.Kind, Reason: e.Reason, Message: e.Message, Upstream: e.Upstream, Hold: e.Hold})
		if err != nil {
			return token.Hold{}, err
		}
		held = string(b)
	}
	vals, err := settle.Exec(ctx, s.c.rc, []string{s.providerKey("budget")}, []string{
		st.Owner, ms(st.Now), outcome, held,
		strconv.FormatInt(st.Backoff.Milliseconds(), 10),
		strconv.FormatInt(st.MaxBackoff.Milliseconds(), 10),
		strconv.FormatInt(floor.Milliseconds(), 10),
	}).ToArray()
	if err != nil {
		return token.Hold{}, fmt.Errorf("redisstore: settle: %w", err)
	}
	if len(vals) != 3 {
		return token.Hold{}, fmt.Errorf("redisstore: settle: %d values, want 3", len(vals))
	}
	return hold(vals[0], vals[1], vals[2])
}

// heldError is what the budget keeps of a rejection: its caller-safe
// parts, never its cause.
type heldError struct {
	Kind     token.Kind    `json:"kind"`
	Reason   string        `json:"reason"`
	Message  string        `json:"message"`
	Upstream string        `json:"upstream,omitempty"`
	Hold     time.Duration `json:"hold,omitempty"`
}

// hold decodes a script's {err, until, strikes}.
func hold(errv, untilv, strikesv rueidis.RedisMessage) (token.Hold, error) {
	js, _ := errv.ToString()
	until, _ := untilv.AsInt64()
	strikes, _ := strikesv.AsInt64()
	h := token.Hold{Strikes: int(strikes)}
	if js == "" {
		return h, nil
	}
	var he heldError
	if err := json.Unmarshal([]byte(js), &he); err != nil {
		return h, fmt.Errorf("redisstore: the held rejection does not decode: %w", err)
	}
	h.Err = &token.Error{Kind: he.Kind, Reason: he.Reason, Message: he.Message, Upstream: he.Upstream, Hold: he.Hold}
	h.Until = time.UnixMilli(until)
	return h, nil
}

// ChargeFailure counts a failed login for creds before it is sent.
func (s *Store) ChargeFailure(ctx context.Context, creds string, limit int) (int, bool, error) {
	vals, err := charge.Exec(ctx, s.c.rc, []string{s.providerKey("fails")}, []string{creds, strconv.Itoa(limit)}).ToArray()
	if err != nil {
		return 0, false, fmt.Errorf("redisstore: charge: %w", err)
	}
	if len(vals) != 2 {
		return 0, false, fmt.Errorf("redisstore: charge: %d values, want 2", len(vals))
	}
	n, _ := vals[0].AsInt64()
	ok, _ := vals[1].AsInt64()
	return int(n), ok == 1, nil
}

// RefundFailure takes one charge back.
func (s *Store) RefundFailure(ctx context.Context, creds string) error {
	return s.refund(ctx, creds, "one")
}

// ClearFailures resets the count after a success.
func (s *Store) ClearFailures(ctx context.Context, creds string) error {
	return s.refund(ctx, creds, "all")
}

func (s *Store) refund(ctx context.Context, creds, how string) error {
	if err := refund.Exec(ctx, s.c.rc, []string{s.providerKey("fails")}, []string{creds, how}).Error(); err != nil {
		return fmt.Errorf("redisstore: refund: %w", err)
	}
	return nil
}

// ReserveStep reserves a TOTP step: SET NX with the step's TTL.
func (s *Store) ReserveStep(ctx context.Context, step int64, ttl time.Duration) (bool, error) {
	rc := s.c.rc
	err := rc.Do(ctx, rc.B().Set().Key(s.providerKey("totp:"+strconv.FormatInt(step, 10))).Value(s.c.id).Nx().PxMilliseconds(max(ttl.Milliseconds(), 1)).Build()).Error()
	switch {
	case rueidis.IsRedisNil(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("redisstore: reserve step: %w", err)
	}
	return true, nil
}

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
