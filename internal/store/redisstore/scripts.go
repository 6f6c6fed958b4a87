package redisstore

import "github.com/redis/rueidis"

// The scripts change one credential's keys, or one provider's, atomically.
// Every key a script touches shares one hash tag, so each runs on one
// node of a Cluster. A stored token's value is "<fence>:<sealed token>":
// the fence is readable here without opening the token.

// acquire takes the lease (KEYS[1]) for owner ARGV[1] for ARGV[2] ms and
// returns {fence, token}: the fence counter (KEYS[2]) incremented, kept
// above the stored token's (KEYS[3]) fence even if the counter was lost,
// and the stored token's value (empty when none). {0, empty}: held by
// another.
var acquire = rueidis.NewLuaScript(`
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, ''}
end
local f = redis.call('INCR', KEYS[2])
local tok = redis.call('GET', KEYS[3])
if tok then
  local tf = tonumber(string.match(tok, '^(%d+):'))
  if tf and tf >= f then
    f = tf + 1
    redis.call('SET', KEYS[2], f)
  end
end
return {f, tok or ''}
`)

// renew extends the lease KEYS[1] to ARGV[2] ms if owner ARGV[1] still
// holds it: 1, else 0.
var renew = rueidis.NewLuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// release deletes the lease KEYS[1] if owner ARGV[1] holds it.
var release = rueidis.NewLuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// save writes the token KEYS[1] = ARGV[1]..':'..ARGV[2] (fence, sealed
// token), expiring at ARGV[3] (unix ms; 0: never), unless the stored
// token's fence is newer: 1 written, 0 refused.
var save = rueidis.NewLuaScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  local cf = tonumber(string.match(cur, '^(%d+):'))
  if cf and cf > tonumber(ARGV[1]) then
    return 0
  end
end
local v = ARGV[1] .. ':' .. ARGV[2]
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], v)
else
  redis.call('SET', KEYS[1], v, 'PXAT', ARGV[3])
end
return 1
`)

// admit decides an attempt on the provider's budget (KEYS[1], a hash:
// err, until, strikes, slot, slotto) for owner ARGV[1], exclusive ARGV[2]
// ("1"), at ARGV[3] (ms, the cache's clock), a slot lasting ARGV[4] ms.
// It returns {ok, err, until, strikes, busy}.
var admit = rueidis.NewLuaScript(`
local h = redis.call('HMGET', KEYS[1], 'err', 'until', 'strikes', 'slot', 'slotto')
local err, untl, strikes = h[1] or '', tonumber(h[2] or '0'), tonumber(h[3] or '0')
local slot, slotto = h[4], tonumber(h[5] or '0')
local now = tonumber(ARGV[3])
if slot and now >= slotto then
  slot = false
end
if err ~= '' and now < untl then
  return {0, err, untl, strikes, 0}
end
if ARGV[2] ~= '1' and err == '' then
  return {1, '', 0, strikes, 0}
end
if slot then
  return {0, err, untl, strikes, 1}
end
redis.call('HSET', KEYS[1], 'slot', ARGV[1], 'slotto', now + tonumber(ARGV[4]))
return {1, '', 0, strikes, 0}
`)

// settle records an attempt's answer on the budget KEYS[1]: owner
// ARGV[1] at ARGV[2] (ms), outcome ARGV[3] ("ok", "rejected" or
// "other"), the held error ARGV[4], and the backoff ARGV[5], its maximum
// ARGV[6] and its floor ARGV[7] (ms). It returns {err, until, strikes}.
var settle = rueidis.NewLuaScript(`
if redis.call('HGET', KEYS[1], 'slot') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'slot', 'slotto')
end
if ARGV[3] == 'ok' then
  redis.call('HDEL', KEYS[1], 'err', 'until', 'strikes')
elseif ARGV[3] == 'rejected' then
  local s = redis.call('HINCRBY', KEYS[1], 'strikes', 1)
  local d, mx, floor = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local i = 1
  while i < s and d < mx do
    d = d * 2
    i = i + 1
  end
  if d > mx then d = mx end
  if d < floor then d = floor end
  redis.call('HSET', KEYS[1], 'err', ARGV[4], 'until', tonumber(ARGV[2]) + d)
end
local h = redis.call('HMGET', KEYS[1], 'err', 'until', 'strikes')
return {h[1] or '', tonumber(h[2] or '0'), tonumber(h[3] or '0')}
`)

// charge counts a failed login for credentials ARGV[1] on KEYS[1] (a
// hash: creds, n) unless ARGV[2] are counted: {n, ok}.
var charge = rueidis.NewLuaScript(`
if redis.call('HGET', KEYS[1], 'creds') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'creds', ARGV[1], 'n', 0)
end
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
if n >= tonumber(ARGV[2]) then
  return {n, 0}
end
return {redis.call('HINCRBY', KEYS[1], 'n', 1), 1}
`)

// refund takes one charge back for credentials ARGV[1] on KEYS[1];
// ARGV[2] "all" resets the count (a success).
var refund = rueidis.NewLuaScript(`
if redis.call('HGET', KEYS[1], 'creds') ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'all' then
  redis.call('HSET', KEYS[1], 'n', 0)
elseif tonumber(redis.call('HGET', KEYS[1], 'n')) > 0 then
  redis.call('HINCRBY', KEYS[1], 'n', -1)
end
return 1
`)
