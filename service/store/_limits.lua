-- include: _push
-- Limits per job type (service/jobs/limit.py), global to every worker: at most `rate` starts
-- in any `period` seconds, at most `concurrency` attempts running at once, each per value of
-- the payload field `key` ('' when the type has none, or the payload lacks it: those share).
-- A limit's config is limit_config_key(type): `override` (the API's) else `code`, each
-- "rate/period/concurrency/key", 0 for none. Times are Redis's own clock (TIME), so workers'
-- clocks do not matter to a window shared by all of them.
--
-- CLAIM asks `limit_holds` of each job it pops. A job over its limit is parked, not started:
-- it goes to its queue's scheduled registry (status scheduled, no attempt spent), and the
-- queue's other jobs are claimed past it.
-- * Rate: the window limit_starts_key(name) holds the claim instants of the last `period`
--   seconds; a job starts only while it holds fewer than `rate`, so no window ever holds more.
--   A job parked is due when a start of the window frees its slot; the parked ones queue up in
--   limit_reserved_key(name), each due at the next slot to free after those before it, so a
--   backlog comes back one job per freed start, not all at once.
-- * Concurrency: each admitted attempt holds a lease, its claim member in
--   limit_leases_key(name) scored like its started-registry entry (the heartbeat renews both),
--   freed by whatever ends the attempt (limit_release). A held job waits in
--   limit_held_key(name) and in the scheduled registry: a freed lease moves the oldest held one
--   to the head of its queue; failing that, promotion brings it back after
--   LIMIT_RECHECK_SECONDS to be looked at again. Leases past their expiry by LIMIT_LEASE_GRACE
--   are dropped when read: a safety net, as a dead worker's jobs are recovered, which frees
--   theirs.
local limit_state = {configs = {}}

-- Whether any job type has a limit: read once per script run, so jobs of a service without
-- limits cost one SCARD per claim.
local function limits_on()
  if limit_state.any == nil then limit_state.any = redis.call('SCARD', LIMITED_KEY) > 0 end
  return limit_state.any
end

local function limit_of(jtype)
  local config = limit_state.configs[jtype]
  if config == nil then
    config = false
    local f = redis.call('HMGET', limit_config_key(jtype), 'override', 'code')
    local text = f[1] or f[2] or ''
    local rate, period, conc, field = string.match(text, '^(%d+)/([%d.]+)/(%d+)/(.*)$')
    if rate and (tonumber(rate) > 0 or tonumber(conc) > 0) then
      config = {rate = tonumber(rate), period = tonumber(period), conc = tonumber(conc),
        field = field}
    end
    limit_state.configs[jtype] = config
  end
  return config
end

local function limit_clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- The job's key value: read from its payload (RQ's data, [func, instance, [payload], {}]) the
-- first time, then kept in its hash as `limit_key`. A payload without the field (or not
-- readable: RQ's compressed data) gives '': such jobs share one window and one set of slots.
local function limit_value(jk, data, field)
  if field == '' then return '' end
  local kept = redis.call('HGET', jk, 'limit_key')
  if kept then return kept end
  local value = ''
  local ok, decoded = pcall(cjson.decode, data)
  if ok and type(decoded) == 'table' and type(decoded[3]) == 'table'
      and type(decoded[3][1]) == 'table' then
    local found = decoded[3][1][field]
    if type(found) == 'string' then value = found end
    if type(found) == 'number' then value = string.format('%.17g', found) end
  end
  redis.call('HSET', jk, 'limit_key', value)
  return value
end

-- At least `ttl` seconds left on `key` (Redis 6.2 has no EXPIRE GT).
local function limit_expire(key, ttl)
  if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
end

-- Parked: due at `at`, when promotion puts it back at the head of its queue (limit_parked), so
-- a backlog of other types in front does not make it miss the start it waited for.
local function limit_park(jk, id, q, at)
  redis.call('HSET', jk, 'status', 'scheduled', 'run_at', at, 'limit_parked', 1)
  redis.call('ZADD', scheduled_key(q), at, id)
end

-- Whether the job (popped from queue q, about to be claimed as `member` with its started
-- entry scored `expiry`) is held back by its type's limit; if not, it holds its start and
-- lease from now on.
local function limit_holds(id, jk, q, data, member, expiry)
  if not limits_on() then return false end
  local jtype = redis.call('HGET', jk, 'description')
  local config = jtype and limit_of(jtype)
  if not config then return false end
  local now = limit_clock()
  local name = jtype .. ':' .. limit_value(jk, data, config.field)
  if config.conc > 0 then
    local leases = limit_leases_key(name)
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', '(' .. (now - LIMIT_LEASE_GRACE))
    if redis.call('ZCARD', leases) >= config.conc then
      redis.call('ZADD', limit_held_key(name), 'NX', now, id)
      limit_expire(limit_held_key(name), LIMIT_KEY_TTL)
      limit_park(jk, id, q, now + LIMIT_RECHECK_SECONDS)
      return true
    end
  end
  if config.rate > 0 then
    local starts, reserved = limit_starts_key(name), limit_reserved_key(name)
    redis.call('ZREMRANGEBYSCORE', starts, '-inf', now - config.period)
    local was = redis.call('ZSCORE', reserved, id)
    if was then redis.call('ZREM', reserved, id) end
    local n = redis.call('ZCARD', starts)
    if n >= config.rate then
      -- The k-th job waiting gets the k-th start to free: slot k % rate of the window, in
      -- round k / rate. One back before its slot freed (a start came late) keeps its place:
      -- behind those due before it, ahead of the others.
      local k = redis.call('ZCOUNT', reserved, '(' .. now, was and ('(' .. was) or '+inf')
      local slot = n - config.rate + k % config.rate
      local frees = redis.call('ZRANGE', starts, slot, slot, 'WITHSCORES')[2]
      local at = tonumber(frees) + config.period * (1 + math.floor(k / config.rate))
      redis.call('ZREMRANGEBYSCORE', reserved, '-inf', now - config.period)
      redis.call('ZADD', reserved, at, id)
      limit_expire(reserved, math.ceil(at - now) + 1)
      limit_park(jk, id, q, at)
      return true
    end
    redis.call('ZADD', starts, now, member)
    redis.call('HSET', jk, 'limit_started', string.format('%.6f', now))  -- the window's instant
    limit_expire(starts, math.ceil(config.period) + 1)
  end
  redis.call('HDEL', jk, 'limit_parked')
  if config.conc > 0 then
    redis.call('ZADD', limit_leases_key(name), expiry, member)
    limit_expire(limit_leases_key(name), LIMIT_KEY_TTL)
    redis.call('HSET', jk, 'limit_lease', name)
    redis.call('ZREM', limit_held_key(name), id)
  end
  return false
end

-- The attempt `member` of job jk ended (or went back to its queue): its lease, if it held one,
-- is freed, and the oldest job held for that slot goes to the head of its queue.
local function limit_release(jk, member)
  if not limits_on() then return end
  local name = redis.call('HGET', jk, 'limit_lease')
  if not name or redis.call('ZREM', limit_leases_key(name), member) == 0 then return end
  redis.call('HDEL', jk, 'limit_lease')
  local held = limit_held_key(name)
  for _ = 1, LIMIT_HELD_RELEASE_MAX do
    local first = redis.call('ZPOPMIN', held)
    if #first == 0 then return end
    local hk = job_key(first[1])
    local hq = redis.call('HGET', hk, 'origin')
    if hq and redis.call('ZREM', scheduled_key(hq), first[1]) == 1 then
      redis.call('HSET', hk, 'status', 'queued')
      push(hq, first[1], true)
      return
    end
  end
end

-- The heartbeat's: the lease of a running attempt kept ahead of the clock, as its started
-- entry is.
local function limit_renew(member, expiry)
  if not limits_on() then return end
  local name = redis.call('HGET', job_key(string.match(member, '^[^:]+')), 'limit_lease')
  if name then redis.call('ZADD', limit_leases_key(name), 'XX', expiry, member) end
end
