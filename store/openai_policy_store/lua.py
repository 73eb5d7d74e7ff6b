"""Lua scripts of the Redis store. Every key a script touches carries the policy's hash tag.

Amounts travel as decimal strings in ARGV and are used as strings for INCRBY/DECRBY, so no
integer ever passes through Lua's ``tostring`` (which would print large ones as ``1e+15``).
Comparisons use Lua numbers (doubles): exact for integers below 2^53 micro-dollars (~9e9 USD).

The reservation sweep relies on the server clock (``TIME``; Redis 7 replicates script effects,
so this is safe), which keeps deadlines consistent between pods whose clocks disagree.
"""

from __future__ import annotations

# Budget key layout shared by all budget scripts:
#   KEYS[1] reservations hash, KEYS[2] deadlines zset,
#   KEYS[1 + 2i] spend key of bucket i, KEYS[2 + 2i] reserved key of bucket i (i = 1..n).
# A bucket is the policy's (named by its window in ARGV) or one user's or feature's (named '=').
# A reservation's record is ``amount|window|bucket|...`` for the policy's buckets, then ``=|<reserved
# key>`` for each user's or feature's: those are swept, settled and released by their key name,
# whichever request (of whichever user) comes by; every such key carries the policy's hash tag,
# so it lives in the slot of the script's declared keys. Records of older sidecars have no '='
# entries; older sidecars read '=' as a window they do not know and skip it.
_SWEEP = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function unreserve(key, amount)
  if tonumber(amount) > 0 and redis.call('EXISTS', key) == 1 then
    if redis.call('DECRBY', key, amount) < 0 then redis.call('DEL', key) end
  end
end

local function parse(rec)
  local parts = {}
  for p in string.gmatch(rec, '[^|]+') do parts[#parts + 1] = p end
  local buckets, keys = {}, {}
  for j = 2, #parts - 1, 2 do
    if parts[j] == '=' then keys[#keys + 1] = parts[j + 1] else buckets[parts[j]] = parts[j + 1] end
  end
  return parts[1], buckets, keys
end

local function unreserve_scoped(keys, amount)
  for _, key in ipairs(keys) do unreserve(key, amount) end
end

-- windows: {name = bucket} currently addressed by KEYS; slot(name) -> index i
local function sweep(now, windows, slot)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 200)
  for _, rid in ipairs(expired) do
    local rec = redis.call('HGET', KEYS[1], rid)
    if rec then
      local amount, buckets, keys = parse(rec)
      for name, bucket in pairs(buckets) do
        if windows[name] == bucket then unreserve(KEYS[2 + 2 * slot[name]], amount) end
      end
      unreserve_scoped(keys, amount)
      redis.call('HDEL', KEYS[1], rid)
    end
    redis.call('ZREM', KEYS[2], rid)
  end
end
"""

# reserve(fbase, commit): ARGV[1..4] = amount, id, hold_ms, n, then per bucket i: ARGV[1+4i..4+4i] =
# name (window, or '=' for a user's or feature's), bucket, limit (-1: none), ttl_seconds;
# ARGV[fbase + i] = the bucket's floor (settled spend the caller saw; absent or 0: none). A spend key
# below its floor lost spend (a wipe): it is raised to the floor (never lowered) first.
# commit false: only read (the rate limits refused). Returns {state (1 reserved, 0 refused,
# -1 not attempted), refused bucket i (0: none), its spent, its reserved, then per bucket: spent,
# reserved (after this reservation; -1, -1 for an unlimited bucket, which is not read)}.
_RESERVE_FN = """
local function reserve(fbase, commit)
  local amount, id, hold, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local now = now_ms()
  local windows, slot = {}, {}
  for i = 1, n do
    local name = ARGV[1 + 4 * i]
    if name ~= '=' then
      windows[name] = ARGV[2 + 4 * i]
      slot[name] = i
    end
  end
  sweep(now, windows, slot)
  for i = 1, n do
    local floor = ARGV[fbase + i]
    if floor and floor ~= '' and floor ~= '0' then
      local held = tonumber(redis.call('GET', KEYS[1 + 2 * i]) or '0')
      if held < tonumber(floor) then
        redis.call('SET', KEYS[1 + 2 * i], floor, 'EX', tonumber(ARGV[4 + 4 * i]))
      end
    end
  end
  local want = tonumber(amount)
  local state, refused = {}, 0
  for i = 1, n do
    local limit = tonumber(ARGV[3 + 4 * i])
    if limit >= 0 then
      local spent = tonumber(redis.call('GET', KEYS[1 + 2 * i]) or '0')
      local reserved = tonumber(redis.call('GET', KEYS[2 + 2 * i]) or '0')
      state[2 * i - 1], state[2 * i] = spent, reserved
      if refused == 0 and spent + reserved + want > limit then refused = i end
    else
      state[2 * i - 1], state[2 * i] = -1, -1
    end
  end
  local out = {1, refused, 0, 0}
  if refused > 0 then out[3], out[4] = state[2 * refused - 1], state[2 * refused] end
  if not commit then
    out[1] = -1
  elseif refused > 0 then
    out[1] = 0
  else
    local rec = amount
    local longest = 0
    for i = 1, n do
      local ttl = tonumber(ARGV[4 + 4 * i])
      redis.call('INCRBY', KEYS[2 + 2 * i], amount)
      redis.call('EXPIRE', KEYS[2 + 2 * i], ttl)
      if ttl > longest then longest = ttl end
      if ARGV[1 + 4 * i] == '=' then
        rec = rec .. '|=|' .. KEYS[2 + 2 * i]
      else
        rec = rec .. '|' .. ARGV[1 + 4 * i] .. '|' .. ARGV[2 + 4 * i]
      end
      if state[2 * i] >= 0 then state[2 * i] = state[2 * i] + want end
    end
    redis.call('HSET', KEYS[1], id, rec)
    redis.call('ZADD', KEYS[2], now + hold, id)
    -- The index outlives every bucket it refers to, so a sweep can always find a dead pod's money.
    redis.call('EXPIRE', KEYS[1], longest)
    redis.call('EXPIRE', KEYS[2], longest)
  end
  for i = 1, 2 * n do out[4 + i] = state[i] end
  return out
end
"""

RESERVE = _SWEEP + _RESERVE_FN + "return reserve(4 + 4 * tonumber(ARGV[4]), true)\n"

# ARGV: id ('' for none), actual, n, then per bucket: name ('=': a user's or feature's), bucket,
# ttl_seconds; then kept, t and per top-spender set j (KEYS[2 + 2n + j]): member, ttl_seconds.
# Returns {found, spent_1, ..., spent_n}: the settled spend after this settle (the caller's floors).
# A top-spender set keeps its ``kept`` highest members: each settle trims the lowest beyond.
SETTLE = (
    _SWEEP
    + """
local id, actual, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local found = 0
if id ~= '' then
  local rec = redis.call('HGET', KEYS[1], id)
  if rec then
    found = 1
    local amount, buckets, keys = parse(rec)
    for i = 1, n do
      local name = ARGV[1 + 3 * i]
      if name ~= '=' and buckets[name] == ARGV[2 + 3 * i] then unreserve(KEYS[2 + 2 * i], amount) end
    end
    unreserve_scoped(keys, amount)
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
  end
end
local out = {found}
for i = 1, n do
  if tonumber(actual) > 0 then
    out[i + 1] = redis.call('INCRBY', KEYS[1 + 2 * i], actual)
    redis.call('EXPIRE', KEYS[1 + 2 * i], tonumber(ARGV[3 + 3 * i]))
  else
    out[i + 1] = tonumber(redis.call('GET', KEYS[1 + 2 * i]) or '0')
  end
end
local kept, t = tonumber(ARGV[4 + 3 * n] or '0'), tonumber(ARGV[5 + 3 * n] or '0')
if tonumber(actual) > 0 then
  for j = 1, t do
    local key = KEYS[2 + 2 * n + j]
    redis.call('ZINCRBY', key, actual, ARGV[4 + 3 * n + 2 * j])
    redis.call('EXPIRE', key, tonumber(ARGV[5 + 3 * n + 2 * j]))
    redis.call('ZREMRANGEBYRANK', key, 0, -(kept + 1))
  end
end
return out
"""
)

# ARGV: n, then per window: name, bucket. Returns spent_1, reserved_1, spent_2, ...
READ = (
    _SWEEP
    + """
local n = tonumber(ARGV[1])
local windows, slot = {}, {}
for i = 1, n do
  if ARGV[2 * i] ~= '=' then
    windows[ARGV[2 * i]] = ARGV[1 + 2 * i]
    slot[ARGV[2 * i]] = i
  end
end
sweep(now_ms(), windows, slot)
local out = {}
for i = 1, n do
  out[#out + 1] = tonumber(redis.call('GET', KEYS[1 + 2 * i]) or '0')
  out[#out + 1] = tonumber(redis.call('GET', KEYS[2 + 2 * i]) or '0')
end
return out
"""
)

# Rate limits are GCRA buckets (protocol.RateCounter): each key holds 'level:stamp', the level
# in unit-milliseconds at the server time stamp (ms). The level drains at `limit` per millisecond,
# so no wall-clock minute exists and no burst can straddle one. A key expires once drained (plus
# a second), so idle users leave nothing behind. Levels stay below 2^53 (limits are bounded by the
# policy schema), so Lua's doubles hold them exactly, and they are written with '%.0f', never
# tostring (which would print large ones as 1e+15).
#
# consume(): buckets KEYS[kbase + i]; ARGV[abase + 3i - 2] = capacity (limit * period),
# ARGV[abase + 3i - 1] = cost (increment * period), ARGV[abase + 3i] = drain per ms (limit), for
# i = 1..m. All-or-none: returns {1, 0, level_1, ...} (levels after charging every bucket), or
# {0, refused i, level_1, ...} (levels as found) having changed nothing.
_CONSUME_FN = """
local function rate_now(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function consume(kbase, abase, m, now)
  local levels = {}
  for i = 1, m do
    local level = 0
    local value = redis.call('GET', KEYS[kbase + i])
    if value then
      local held, stamp = string.match(value, '^(%d+):(%d+)$')
      if held then
        local elapsed = now - tonumber(stamp)
        if elapsed < 0 then elapsed = 0 end
        level = tonumber(held) - elapsed * tonumber(ARGV[abase + 3 * i])
        if level < 0 then level = 0 end
      end
    end
    levels[i] = level
  end
  for i = 1, m do
    if levels[i] + tonumber(ARGV[abase + 3 * i - 1]) > tonumber(ARGV[abase + 3 * i - 2]) then
      local out = {0, i}
      for j = 1, m do out[#out + 1] = levels[j] end
      return out
    end
  end
  local out = {1, 0}
  for i = 1, m do
    local level = levels[i] + tonumber(ARGV[abase + 3 * i - 1])
    local drain = tonumber(ARGV[abase + 3 * i])
    local ttl = math.ceil(level / drain) + 1000
    redis.call('SET', KEYS[kbase + i], string.format('%.0f:%.0f', level, now), 'PX', string.format('%.0f', ttl))
    out[#out + 1] = level
  end
  return out
end
"""

# KEYS: one bucket per limit. ARGV: now ('' for the server's clock), then per bucket: capacity,
# cost, drain. Returns {allowed, refused index (0: none), level_1, level_2, ...}.
RATE = _CONSUME_FN + "return consume(0, 1, #KEYS, rate_now(ARGV[1]))\n"

# Rate limits and budget reservation in one round trip (one atomic script).
# KEYS: the budget keys as for RESERVE (2 + 2n), then one rate bucket per limit (m).
# ARGV: RESERVE's (4 + 4n), then now ('' for the server's clock), m, per bucket: capacity, cost,
# drain, then '1' to reserve even when the rate limits refuse (dry run) or '0', then the floors (n).
# Returns {rate allowed, rate refused index, budget state (-1: not attempted, 1: reserved,
# 0: refused), refused bucket index, spent, reserved, level_1, ..., level_m, then reserve()'s
# spent and reserved per bucket (read even when not attempted: the remaining-budget headers)}.
RATE_AND_RESERVE = (
    _SWEEP
    + _RESERVE_FN
    + _CONSUME_FN
    + """
local n = tonumber(ARGV[4])
local rbase = 4 + 4 * n
local m = tonumber(ARGV[rbase + 2])
local rate = consume(2 + 2 * n, rbase + 2, m, rate_now(ARGV[rbase + 1]))
local held = reserve(rbase + 3 + 3 * m, rate[1] == 1 or ARGV[rbase + 3 + 3 * m] == '1')
local out = {rate[1], rate[2], held[1], held[2], held[3], held[4]}
for i = 3, #rate do out[#out + 1] = rate[i] end
for i = 5, #held do out[#out + 1] = held[i] end
return out
"""
)

# Restore a window's settled spend after the store lost it (a wipe, a restart without AOF):
# raise the counter to ARGV[1] when it holds less, never lower it. KEYS[1] spend key; ARGV[1]
# micro-dollars, ARGV[2] ttl_seconds. Returns the micro-dollars added (0 when it held as much).
RESTORE = """
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
local want = tonumber(ARGV[1])
if held >= want then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return want - held
"""
