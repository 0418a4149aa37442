"""The Lua scripts of :class:`shekel.stores.RedisStore`: one per operation, each atomic on the server.

Every script reads the time from the server (``TIME``), plus ``ARGV[1]`` seconds (0 outside tests, which
move the clock forward this way), so hosts with skewed clocks agree on leases and windows.

Keys of budget ``N`` (``P`` = ``shekel:{N}:``; the braces make ``N`` the hash tag):

* ``P config``: hash (window, max_nano, max_calls, max_tokens, updated) as processes last opened it;
* ``P holds``: hash, hold id -> ``money|tokens|owner|model``; ``P deadlines``: sorted set, hold id -> deadline;
* ``P held``: string ``money|tokens|count``, the running totals of ``P holds`` (a reserve reads them, not
  every hold: its cost does not grow with the calls in flight); none while nothing is held, and rebuilt
  from ``P holds`` when missing;
* ``P buckets``: hash, ``window|bucket|m`` (nano-dollars), ``|c`` (calls), ``|f`` (failed), ``|i`` and ``|o``
  (tokens); buckets out of their window are pruned by every write, and the hash expires (TTL) when unused;
* ``P expired``: hash, hold id -> ``window|bucket|money|tokens|log entry`` of a hold its lease ended, so
  that a late settle replaces its charge (kept at least 7 days, ``P expired_at``: pruned by the next sweep
  that expires a hold);
* ``P log``: list of settled calls (JSON), capped at ``LOG_LIMIT`` entries;
* ``shekel:names``: set of every budget's name.

Redis Lua numbers are doubles: every amount stays below 2**53 (``MAX_EXACT_NANO``), integers are written
back with ``%.0f`` (never in exponent form), and floor division is corrected to be exact.
"""

from __future__ import annotations

#: Lua helpers, in an order where each calls only ones before it. A script carries only those it calls:
#: each is a closure made anew on every run of a script.
_HELPERS: dict[str, str] = {
    "s": r"""
local function s(n) if n == 0 then return '0' end return string.format('%.0f', n) end
""",
    "t": r"""
local function t(n) return string.format('%.17g', n) end
""",
    "opt": r"""
local function opt(v) if v == nil or v == '' then return nil end return tonumber(v) end
""",
    "idiv": r"""
local function idiv(a, b)
  local q = math.floor(a / b)
  while q * b > a do q = q - 1 end
  while (q + 1) * b <= a do q = q + 1 end
  return q
end
""",
    "clock": r"""
local server_now = nil  -- read once per script run (settles and a reserve in one run share it)
local function clock(offset)
  if server_now == nil then
    local now = redis.call('TIME')
    server_now = tonumber(now[1]) + tonumber(now[2]) / 1000000
  end
  return server_now + tonumber(offset)
end
""",
    "rolling": r"""
local function rolling(spec)
  if spec == 'none' or spec == 'day' or spec == 'week' or spec == 'month' then return nil end
  return tonumber(string.sub(spec, 1, -2))
end
""",
    "bucket_of": r"""
local function bucket_of(spec, now)
  if spec == 'none' then return 0 end
  local day = math.floor(now / 86400)
  if spec == 'day' then return day * 86400 end
  if spec == 'week' then return (day - (day + 3) % 7) * 86400 end  -- 1970-01-01 was a Thursday
  if spec == 'month' then  -- days from civil (H. Hinnant): the first day of the month of `day`
    local z = day + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local dd = doy - math.floor((153 * mp + 2) / 5) + 1
    return (day - dd + 1) * 86400
  end
  local w = rolling(spec)
  return math.floor(now / (w / 60))
end
""",
    "first_of": r"""
local function first_of(spec, now)
  local w = rolling(spec)
  if w == nil then return bucket_of(spec, now) end
  return math.floor((now - w) / (w / 60))
end
""",
    "ttl_of": r"""
local function ttl_of(spec)
  local w = rolling(spec)
  if w ~= nil then return 2 * w + 60 end
  if spec == 'day' then return 2 * 86400 end
  if spec == 'week' then return 14 * 86400 end
  if spec == 'month' then return 62 * 86400 end
  return nil
end
""",
    "spec_of": r"""
local function spec_of(p)
  return redis.call('HGET', p .. 'config', 'window') or 'none'
end
""",
    "add": r"""
local function add(p, spec, bucket, money, calls, failed, inp, outp)
  local key = p .. 'buckets'
  local f = spec .. '|' .. s(bucket) .. '|'
  redis.call('HINCRBY', key, f .. 'm', s(money))  -- always: it marks the bucket as there (see SETTLE)
  if calls ~= 0 then redis.call('HINCRBY', key, f .. 'c', s(calls)) end
  if failed ~= 0 then redis.call('HINCRBY', key, f .. 'f', s(failed)) end
  if inp ~= 0 then redis.call('HINCRBY', key, f .. 'i', s(inp)) end
  if outp ~= 0 then redis.call('HINCRBY', key, f .. 'o', s(outp)) end
  -- One TTL for every bucket in the key: never shorter than its longest-lived window needs. A window without
  -- end keeps the key for good; after a reset, charges of an old window may share the key with it.
  local ttl = ttl_of(spec)
  if ttl == nil then
    redis.call('PERSIST', key)
  else
    local left = redis.call('TTL', key)
    if (left == -1 and redis.call('HEXISTS', key, 'none|0|m') == 0) or (left >= 0 and left < ttl) then
      redis.call('EXPIRE', key, ttl)
    end
  end
end
""",
    "split_hold": r"""
local function split_hold(v)
  local money, tokens, owner, model = string.match(v, '^(%d+)|(%d+)|([^|]*)|(.*)$')
  return tonumber(money), tonumber(tokens), owner, model
end
""",
    "held": r"""
-- The running totals of the budget's holds (money, tokens, count): read once per script run, then cached.
local held_cache = {}
local function held_of(p)
  local c = held_cache[p]
  if c then return c[1], c[2], c[3] end
  local m, tk, n = 0, 0, 0
  local v = redis.call('GET', p .. 'held')
  if v then
    m, tk, n = string.match(v, '^(%d+)|(%d+)|(%d+)$')
    m, tk, n = tonumber(m), tonumber(tk), tonumber(n)
  else  -- missing (kept by an older version, or deleted by hand): the holds' sum
    for _, h in ipairs(redis.call('HVALS', p .. 'holds')) do
      local money, tokens = split_hold(h)
      m, tk, n = m + money, tk + tokens, n + 1
    end
  end
  held_cache[p] = {m, tk, n}
  return m, tk, n
end
local function set_held(p, m, tk, n)
  if n <= 0 then  -- none held: no key (a budget with no call in flight has none)
    held_cache[p] = {0, 0, 0}
    redis.call('DEL', p .. 'held')
    return
  end
  m, tk = math.max(m, 0), math.max(tk, 0)
  held_cache[p] = {m, tk, n}
  redis.call('SET', p .. 'held', s(m) .. '|' .. s(tk) .. '|' .. s(n))
end
-- Take hold `id` off the budget: its value, or nil when it is not held (settled, released or expired).
local function unhold(p, id)
  local v = redis.call('HGET', p .. 'holds', id)
  redis.call('ZREM', p .. 'deadlines', id)
  if not v then return nil end
  redis.call('HDEL', p .. 'holds', id)
  local money, tokens = split_hold(v)
  local m, tk, n = held_of(p)
  set_held(p, m - money, tk - tokens, n - 1)
  return v
end
-- What holds of `owner` (this process) hold: a scan of every hold, only when a call is refused.
local function own_of(p, owner)
  local money, tokens, calls = 0, 0, 0
  for _, v in ipairs(redis.call('HVALS', p .. 'holds')) do
    local m, tk, who = split_hold(v)
    if who == owner then money, tokens, calls = money + m, tokens + tk, calls + 1 end
  end
  return money, tokens, calls
end
""",
    "host_of": r"""
local function host_of(id) return string.match(id, '^([^:]*)') end
""",
    "push_log": r"""
local function push_log(p, entry, limit)
  if redis.call('RPUSH', p .. 'log', entry) > limit then redis.call('LTRIM', p .. 'log', -limit, -1) end
end
""",
    "prune_expired": r"""
local function prune_expired(p, now)
  local old = redis.call('ZRANGEBYSCORE', p .. 'expired_at', '-inf', '(' .. t(now - 7 * 86400))
  for _, x in ipairs(old) do
    redis.call('HDEL', p .. 'expired', x)
    redis.call('ZREM', p .. 'expired_at', x)
  end
end
""",
    "sweep": r"""
-- Charge every hold whose lease ran out at what it held (in window `spec`, by default the stored one), and
-- remember it as expired.
local function sweep(p, name, now, limit, spec)
  local ids = redis.call('ZRANGEBYSCORE', p .. 'deadlines', '-inf', '(' .. t(now))
  if #ids == 0 then return end
  prune_expired(p, now)
  spec = spec or spec_of(p)
  local bucket = bucket_of(spec, now)
  for _, id in ipairs(ids) do
    local v = unhold(p, id)
    if v then
      local money, tokens, _, model = split_hold(v)
      add(p, spec, bucket, money, 0, 1, tokens, 0)
      local entry = '{"at":' .. string.format('%.6f', now) .. ',"name":' .. cjson.encode(name)
        .. ',"model":' .. (model == '' and 'null' or cjson.encode(model))
        .. ',"provider":null,"input_tokens":' .. s(tokens) .. ',"output_tokens":0,"cost_nano":' .. s(money)
        .. ',"estimated":1,"expired":1,"outcome":"unknown","path":null,"host":' .. cjson.encode(host_of(id))
        .. ',"hold":' .. cjson.encode(id) .. '}'
      redis.call('HSET', p .. 'expired', id, spec .. '|' .. s(bucket) .. '|' .. s(money) .. '|' .. s(tokens) .. '|' .. entry)
      redis.call('ZADD', p .. 'expired_at', t(now), id)
      push_log(p, entry, limit)
    end
  end
end
""",
    "figures": r"""
-- The budget's figures in window `spec` at `now`; with `prune`, buckets out of the window are dropped. With
-- `adopt` (no window is stored: the budget was reset, or is new), buckets of other windows (charges made
-- since, by calls held under another window) are moved into this window's current bucket, not dropped.
local function figures(p, spec, now, prune, adopt)
  local first = first_of(spec, now)
  local keep = first
  local r = {spent = 0, calls = 0, failed = 0, inp = 0, outp = 0}
  local flat = redis.call('HGETALL', p .. 'buckets')
  local stale = {}
  local moved = nil
  for i = 1, #flat, 2 do
    local fspec, b, kind = string.match(flat[i], '^(.*)|(-?%d+)|(%a)$')
    b = tonumber(b)
    if fspec == spec and b >= first then
      local v = tonumber(flat[i + 1])
      if kind == 'm' then r.spent = r.spent + v
      elseif kind == 'c' then r.calls = r.calls + v
      elseif kind == 'f' then r.failed = r.failed + v
      elseif kind == 'i' then r.inp = r.inp + v
      else r.outp = r.outp + v end
    elseif adopt and fspec ~= spec then
      moved = moved or {m = 0, c = 0, f = 0, i = 0, o = 0, from = {}}
      moved[kind] = moved[kind] + tonumber(flat[i + 1])
      moved.from[fspec .. '|' .. s(b)] = true
      stale[#stale + 1] = flat[i]
    elseif prune and (fspec ~= spec or b < keep) then
      stale[#stale + 1] = flat[i]
    end
  end
  if #stale > 0 then redis.call('HDEL', p .. 'buckets', unpack(stale)) end
  if moved then
    local bucket = bucket_of(spec, now)
    add(p, spec, bucket, moved.m, moved.c, moved.f, moved.i, moved.o)
    -- Expiries among the charges moved: a late settle takes their charge back from where it now is (one
    -- whose bucket was dropped before keeps pointing at it: its charge is no longer counted anywhere).
    local xs = redis.call('HGETALL', p .. 'expired')
    for i = 1, #xs, 2 do
      local from, rest = string.match(xs[i + 1], '^([^|]*|%-?%d+)|(.*)$')
      if moved.from[from] then redis.call('HSET', p .. 'expired', xs[i], spec .. '|' .. s(bucket) .. '|' .. rest) end
    end
    r.spent, r.calls, r.failed = r.spent + moved.m, r.calls + moved.c, r.failed + moved.f
    r.inp, r.outp = r.inp + moved.i, r.outp + moved.o
  end
  r.reserved, r.rtok, r.inflight = held_of(p)
  return r
end
""",
    "reply": r"""
local function reply(r)
  return {s(r.spent), s(r.reserved), s(r.calls), s(r.failed), s(r.inflight), s(r.inp), s(r.outp), s(r.rtok)}
end
""",
}


def _with(*names: str) -> str:
    return "".join(code for name, code in _HELPERS.items() if name in names)


#: ARGV: offset, log limit, hold id, owner, input_nano, output_nano, prompt_tokens, max_tokens ('' = as many
#: as fit), ceiling, margin, lease, model ('' = none), patient ('1'/'0'), then per budget (KEYS[i] its prefix):
#: name, window, max_nano, max_calls, max_tokens ('' = no limit).
#: Returns {'ok', now, max_tokens or '', money, tokens, spent...} or {'no', now, name, reason, waitable,
#: needed, figures...} or {'window', now, name, stored window}.
_RESERVE_BODY = r"""
local now = clock(ARGV[1])
local limit = tonumber(ARGV[2])
local id, owner = ARGV[3], ARGV[4]
local input_nano, output_nano, prompt_tokens = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local k, ceiling, margin, lease = opt(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local model, patient = ARGV[12], ARGV[13] == '1'
-- Given up by its process (its answer was lost, and UNDO ran first): never held.
if redis.call('EXISTS', KEYS[1] .. 'undone:' .. id) == 1 then return {'undone', t(now)} end
local budgets = {}
for i = 1, #KEYS do
  local a = 13 + (i - 1) * 5
  local b = {p = KEYS[i], name = ARGV[a + 1], spec = ARGV[a + 2], max_nano = opt(ARGV[a + 3]),
             max_calls = opt(ARGV[a + 4]), max_tokens = opt(ARGV[a + 5])}
  b.raw = {ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]}
  b.stored = redis.call('HMGET', b.p .. 'config', 'window', 'max_nano', 'max_calls', 'max_tokens', 'updated')
  local stored = b.stored[1]
  if stored and stored ~= b.spec then return {'window', t(now), b.name, stored} end
  budgets[i] = b
end
local figs = {}
for i, b in ipairs(budgets) do
  local st = b.stored
  -- The limits as processes last opened it, and when: written when they change, or once a minute.
  if not st[1] or st[2] ~= b.raw[1] or st[3] ~= b.raw[2] or st[4] ~= b.raw[3] or now - tonumber(st[5]) > 60 then
    redis.call('HSET', b.p .. 'config', 'window', b.spec, 'max_nano', b.raw[1], 'max_calls', b.raw[2],
               'max_tokens', b.raw[3], 'updated', t(now))
    if not st[1] then redis.call('SADD', 'shekel:names', b.name) end
  end
  sweep(b.p, b.name, now, limit)
  figs[i] = figures(b.p, b.spec, now, true, not st[1])
end
-- The rule of shekel.ledger.sqlite._fit, over the same integers.
if k == nil then
  local bound = nil
  for i, b in ipairs(budgets) do
    local f = figs[i]
    if b.max_nano ~= nil and output_nano > 0 then
      local free = b.max_nano - f.spent
      if not patient then free = free - f.reserved end
      local by_money = idiv(free - input_nano, output_nano) - margin
      if bound == nil or by_money < bound then bound = by_money end
    end
    if b.max_tokens ~= nil then
      local free_tokens = b.max_tokens - (f.inp + f.outp)
      if not patient then free_tokens = free_tokens - f.rtok end
      local by_tokens = free_tokens - prompt_tokens - margin
      if bound == nil or by_tokens < bound then bound = by_tokens end
    end
  end
  if bound ~= nil then k = math.max(math.min(ceiling, bound), 1) end
end
local output = 0
if k ~= nil then output = k + margin end
local money = input_nano + output_nano * output
local tokens = prompt_tokens + output
local least_out = opt(ARGV[8]) or 1
local least = input_nano + output_nano * (least_out + margin)
local least_tokens = prompt_tokens + least_out + margin
for i, b in ipairs(budgets) do
  local f = figs[i]
  local made = f.calls + f.failed
  local reason, needed = nil, 0
  if b.max_calls ~= nil and made + f.inflight >= b.max_calls then
    reason = 'calls'
  elseif b.max_tokens ~= nil and f.inp + f.outp + f.rtok + tokens > b.max_tokens then
    reason = 'tokens'
  elseif b.max_nano ~= nil and f.spent + f.reserved + money > b.max_nano then
    reason = 'usd'
    needed = money
  end
  if reason ~= nil then
    -- Waitable: holds of other processes are in the way, and once they end this call could fit.
    local own_money, own_tokens, own_calls = own_of(b.p, owner)
    local waitable = f.inflight - own_calls > 0
    if reason == 'calls' then waitable = waitable and made + own_calls < b.max_calls
    elseif reason == 'tokens' then waitable = waitable and f.inp + f.outp + own_tokens + least_tokens <= b.max_tokens
    else waitable = waitable and f.spent + own_money + least <= b.max_nano end
    local out = {'no', t(now), b.name, reason, waitable and '1' or '0', s(needed)}
    for _, v in ipairs(reply(f)) do out[#out + 1] = v end
    return out
  end
end
local deadline = t(now + lease)
local value = s(money) .. '|' .. s(tokens) .. '|' .. owner .. '|' .. model
local out = {'ok', t(now), k == nil and '' or s(k), s(money), s(tokens)}
for i, b in ipairs(budgets) do
  local f = figs[i]
  if redis.call('HSET', b.p .. 'holds', id, value) == 1 then
    set_held(b.p, f.reserved + money, f.rtok + tokens, f.inflight + 1)
  else  -- the same hold id reserved again (a retry of a reserve whose answer was lost): held once
    local m, tk, n = 0, 0, 0
    for _, v in ipairs(redis.call('HVALS', b.p .. 'holds')) do
      local hm, ht = split_hold(v)
      m, tk, n = m + hm, tk + ht, n + 1
    end
    set_held(b.p, m, tk, n)
  end
  redis.call('ZADD', b.p .. 'deadlines', deadline, id)
  for _, v in ipairs(reply(f)) do out[#out + 1] = v end
end
return out
"""
RESERVE = "".join(_HELPERS.values()) + _RESERVE_BODY

#: ARGV: offset, log limit, hold id, money, calls, failed, input tokens, output tokens, log entry (JSON without
#: ``at`` and ``name``), then the budgets' names (KEYS: their prefixes), then optionally their windows as the
#: call was held. A settle is charged in the budget's stored window (the one its processes read now), or,
#: when none is stored (the budget was reset meanwhile), in the window it was held under.
_SETTLE_BODY = r"""
local now = clock(ARGV[1])
local limit = tonumber(ARGV[2])
local id = ARGV[3]
local money, calls, failed = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local inp, outp, rest = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
for i, p in ipairs(KEYS) do
  local name = ARGV[9 + i]
  local spec = redis.call('HGET', p .. 'config', 'window') or ARGV[9 + #KEYS + i] or 'none'
  if unhold(p, id) == nil then
    -- Settled after its lease ran out: take back the charge its expiry made (never counted twice).
    local rec = redis.call('HGET', p .. 'expired', id)
    if rec then
      redis.call('HDEL', p .. 'expired', id)
      redis.call('ZREM', p .. 'expired_at', id)
      local xspec, xbucket, xmoney, xtokens, entry = string.match(rec, '^([^|]*)|(-?%d+)|(%d+)|(%d+)|(.*)$')
      local f = xspec .. '|' .. xbucket .. '|'
      if redis.call('HEXISTS', p .. 'buckets', f .. 'm') == 1 then
        redis.call('HINCRBY', p .. 'buckets', f .. 'm', s(-tonumber(xmoney)))
        redis.call('HINCRBY', p .. 'buckets', f .. 'f', -1)
        redis.call('HINCRBY', p .. 'buckets', f .. 'i', s(-tonumber(xtokens)))
      end
      redis.call('LREM', p .. 'log', -1, entry)
    end
  end
  add(p, spec, bucket_of(spec, now), money, calls, failed, inp, outp)
  push_log(p, '{"at":' .. string.format('%.6f', now) .. ',"name":' .. cjson.encode(name) .. ',' .. string.sub(rest, 2), limit)
end
return t(now)
"""
SETTLE = (
    _with(
        "s",
        "t",
        "clock",
        "rolling",
        "bucket_of",
        "ttl_of",
        "spec_of",
        "add",
        "split_hold",
        "held",
        "push_log",
    )
    + _SETTLE_BODY
)

#: Settles, then a reserve, in one script (the hot path: a call's settle is sent with the next call's reserve).
#: ARGV: the number of settles; then per settle its number of keys and of arguments, and its arguments (as
#: SETTLE's); then RESERVE's arguments. KEYS: each settle's keys, then RESERVE's. Returns RESERVE's answer.
SETTLES_THEN_RESERVE = (
    "".join(_HELPERS.values())
    + "local function settle(KEYS, ARGV)\n"
    + _SETTLE_BODY
    + "end\nlocal function reserve(KEYS, ARGV)\n"
    + _RESERVE_BODY
    + r"""end
local k, a = 1, 2
for _ = 1, tonumber(ARGV[1]) do
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  settle({unpack(KEYS, k, k + nk - 1)}, {unpack(ARGV, a + 2, a + 1 + na)})
  k, a = k + nk, a + 2 + na
end
return reserve({unpack(KEYS, k)}, {unpack(ARGV, a)})
"""
)

#: ARGV: hold id. KEYS: the budgets' prefixes.
RELEASE = (
    _with("s", "split_hold", "held")
    + r"""
for _, p in ipairs(KEYS) do unhold(p, ARGV[1]) end
return 1
"""
)

#: A reserve whose answer was lost, given up by its process: its hold is released, or, when it is not there
#: (the reserve has not run yet: delayed on its way), a mark makes that reserve hold nothing when it runs.
#: ARGV: hold id, seconds to keep the mark. KEYS: the budgets' prefixes.
UNDO = (
    _with("s", "split_hold", "held")
    + r"""
for _, p in ipairs(KEYS) do
  if unhold(p, ARGV[1]) == nil then redis.call('SET', p .. 'undone:' .. ARGV[1], '1', 'EX', ARGV[2]) end
end
return 1
"""
)

#: ARGV: offset, hold id, lease. KEYS: the budgets' prefixes.
RENEW = (
    _with("t", "clock")
    + r"""
local deadline = t(clock(ARGV[1]) + tonumber(ARGV[3]))
for _, p in ipairs(KEYS) do
  redis.call('ZADD', p .. 'deadlines', 'XX', deadline, ARGV[2])  -- XX: only a hold still there
end
return 1
"""
)

#: ARGV: offset, log limit, name, window. KEYS[1]: the budget's prefix.
#: Returns {'ok', now, figures...} or {'window', now, name, stored window}.
READ = (
    _with(*(name for name in _HELPERS if name not in ("opt", "idiv")))
    + r"""
local now = clock(ARGV[1])
local p = KEYS[1]
local stored = redis.call('HGET', p .. 'config', 'window')
if stored and stored ~= ARGV[4] then return {'window', t(now), ARGV[3], stored} end
-- None stored: expiries are charged in the reader's window, where it adopts other charges too.
sweep(p, ARGV[3], now, tonumber(ARGV[2]), stored or ARGV[4])
local out = {'ok', t(now)}
for _, v in ipairs(reply(figures(p, ARGV[4], now, true, not stored))) do out[#out + 1] = v end
return out
"""
)

#: ARGV: name. KEYS[1]: the budget's prefix. Its holds of calls in flight stay.
RESET = r"""
local p = KEYS[1]
redis.call('DEL', p .. 'buckets', p .. 'expired', p .. 'expired_at', p .. 'config')
redis.call('SREM', 'shekel:names', ARGV[1])
return 1
"""

#: ARGV: the names whose logs to read (KEYS: their prefixes). Returns their entries, each list in order.
LOG = r"""
local out = {}
for _, p in ipairs(KEYS) do
  for _, entry in ipairs(redis.call('LRANGE', p .. 'log', 0, -1)) do out[#out + 1] = entry end
end
return out
"""
