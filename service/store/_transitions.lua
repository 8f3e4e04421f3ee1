-- include: _push _limits
-- Shared by the scripts that end an attempt. `now` is epoch seconds, `now_iso` RQ's format.
-- Each such script first calls set_limits with the operator's retention limits, three
-- arguments in the order of settings.Retention.args(): MAX_RESULT_TTL, MAX_FAILURE_TTL,
-- DEAD_MAX_JOBS.
local limits = {}
local function set_limits(argv, first)
  limits.result_ttl = tonumber(argv[first])
  limits.failure_ttl = tonumber(argv[first + 1])
  limits.dead_max = tonumber(argv[first + 2])
end

-- A job's TTL as it asks (else the default), within 1..ceiling whoever wrote it: to RQ a
-- negative TTL (it writes -1) means "kept forever", which is as long as the ceiling allows
-- here; 0 ("not kept") is one second.
local function ttl_of(jk, field, default, ceiling)
  local ttl = tonumber(redis.call('HGET', jk, field) or '') or default
  if ttl ~= ttl then ttl = default end  -- nan
  if ttl < 0 then return ceiling end
  return math.max(1, math.min(math.floor(ttl), ceiling))
end

local function result_ttl(jk)
  return ttl_of(jk, 'result_ttl', RESULT_TTL, limits.result_ttl)
end

local function failure_ttl(jk)
  return ttl_of(jk, 'failure_ttl', FAILURE_TTL, limits.failure_ttl)
end

-- DEAD_MAX_JOBS, before a job joins the failed registry of its queue: entries already expired
-- go, then the lowest-scored (the soonest to expire: the oldest failures among jobs that share
-- a failure_ttl) until there is room for it; at most DEAD_TRIM_MAX of each, so a lowered limit
-- is reached over a few failures, never in one long script. A dead job goes with its hash and
-- results stream; those removed for room are counted in DEAD_TRIMMED_KEY.
local function drop_dead(key, q, member)
  redis.call('ZREM', key, member)
  local jk = job_key(member)
  local f = redis.call('HMGET', jk, 'status', 'origin')
  if f[1] ~= 'failed' or f[2] ~= q then return 0 end  -- a stale entry: its job moved on
  redis.call('DEL', jk, result_key(member))
  return 1
end

local function make_room(q, id, now)
  local key = failed_key(q)
  local expired = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. now, 'LIMIT', 0, DEAD_TRIM_MAX)
  for _, member in ipairs(expired) do drop_dead(key, q, member) end
  local joining = redis.call('ZSCORE', key, id) and 0 or 1
  local over = math.min(redis.call('ZCARD', key) + joining - limits.dead_max, DEAD_TRIM_MAX)
  if over <= 0 then return end
  local removed, trimmed = 0, 0
  for _, member in ipairs(redis.call('ZRANGE', key, 0, over)) do  -- one more: `id` is kept
    if member ~= id and removed < over then
      removed = removed + 1
      trimmed = trimmed + drop_dead(key, q, member)
    end
  end
  if trimmed > 0 then redis.call('INCRBY', DEAD_TRIMMED_KEY, trimmed) end
end

-- One results-stream entry per attempt: RQ's Result (type 1 ok, 2 failed, 3 stopped,
-- 4 retried) plus `reason`: exception, timeout, worker_lost, interrupted or canceled.
local function add_result(id, kind, reason, worker, field, value, exec, t0, t1, ttl)
  local rk = result_key(id)
  local entry = {'type', kind, 'worker_name', worker, 'execution_id', exec,
    'execution_started_at', t0, 'execution_ended_at', t1}
  if reason ~= '' then table.insert(entry, 'reason'); table.insert(entry, reason) end
  if field ~= '' then table.insert(entry, field); table.insert(entry, value) end
  redis.call('XADD', rk, 'MAXLEN', '~', RESULTS_KEPT, '*', unpack(entry))
  redis.call('EXPIRE', rk, ttl)
end

local function finish(jk, id, q, member, worker, value, t0, t1, now_iso, now)
  local ttl = result_ttl(jk)
  redis.call('ZREM', started_key(q), member)
  redis.call('HSET', jk, 'status', 'finished', 'ended_at', now_iso, 'last_heartbeat', now_iso)
  redis.call('ZADD', finished_key(q), now + ttl, id)
  redis.call('EXPIRE', jk, ttl)
  add_result(id, '1', '', worker, value ~= '' and 'return_value' or '', value, member, t0, t1, ttl)
  record(id, 'finished', 'worker', worker, 'result', value, 't0', t0, 't1', t1)
end

-- A failed attempt: retried after `delay` seconds (scheduled, as RQ's retry intervals are)
-- while retries are left, else moved to the failed registry, the dead-letter queue.
local function fail(jk, id, q, member, worker, exc, reason, delay, t0, t1, now_iso, now)
  local ttl = failure_ttl(jk)
  redis.call('ZREM', started_key(q), member)
  local left = tonumber(redis.call('HGET', jk, 'retries_left') or '0') or 0
  if left > 0 then
    redis.call('HSET', jk, 'retries_left', left - 1, 'worker_name', '')
    if delay > 0 then
      redis.call('HSET', jk, 'status', 'scheduled', 'run_at', now + delay)
      redis.call('ZADD', scheduled_key(q), now + delay, id)
    else
      redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', now_iso)
      push(q, id, false)
    end
    add_result(id, '4', reason, worker, 'exc_string', exc, member, t0, t1, ttl)
    record(id, 'retried', 'worker', worker, 'reason', reason, 'error', exc, 't0', t0, 't1', t1)
    return 'retried'
  end
  redis.call('HSET', jk, 'status', 'failed', 'ended_at', now_iso, 'last_heartbeat', now_iso)
  make_room(q, id, now)
  redis.call('ZADD', failed_key(q), now + ttl, id)
  redis.call('EXPIRE', jk, ttl)
  add_result(id, '2', reason, worker, 'exc_string', exc, member, t0, t1, ttl)
  record(id, 'dead', 'worker', worker, 'reason', reason, 'error', exc, 't0', t0, 't1', t1)
  return 'failed'
end

-- Back at the head of its queue, not counted as an attempt (shutdown, or never started).
local function interrupt(jk, id, q, member, worker, t0, t1, keep)
  if redis.call('ZREM', started_key(q), member) == 0 then return 0 end
  if redis.call('HGET', jk, 'status') ~= 'started' then return 0 end
  redis.call('HINCRBY', jk, 'attempts', -1)
  redis.call('HSET', jk, 'status', 'queued', 'worker_name', '')
  push(q, id, true)
  if keep then
    local ttl = failure_ttl(jk)
    add_result(id, '3', 'interrupted', worker, '', '', member, t0, t1, ttl)
    record(id, 'interrupted', 'worker', worker, 't0', t0, 't1', t1)
  end
  return 1
end

-- The attempt ended with its runner's death (a killed worker process, or the forked child of
-- a job running alone after an earlier crash). Re-delivered, not counted against its retries,
-- until it has crashed MAX_CRASHES times, then failed with reason worker_lost. Returns
-- 'failed' or 'retried'. ZREM first: Redis refuses a memory-growing command (HINCRBY) in a
-- script only while the script has written nothing, so a full Redis (noeviction) still
-- recovers the job.
local function crashed(jk, id, q, member, who, exc, max_crashes, t0, t1, now_iso, now)
  redis.call('ZREM', started_key(q), member)
  if redis.call('HINCRBY', jk, 'crashes', 1) >= max_crashes then
    redis.call('HSET', jk, 'retries_left', 0)
    fail(jk, id, q, member, who, exc, 'worker_lost', 0, t0, t1, now_iso, now)
    return 'failed'
  end
  local ttl = failure_ttl(jk)
  redis.call('HSET', jk, 'status', 'queued', 'worker_name', '', 'enqueued_at', now_iso)
  push(q, id, false)
  add_result(id, '4', 'worker_lost', who, 'exc_string', exc, member, t0, t1, ttl)
  record(id, 'retried', 'worker', who, 'reason', 'worker_lost', 'error', exc)
  return 'retried'
end

local function cancel(jk, id, q, member, worker, t0, t1, now_iso, now)
  local ttl = failure_ttl(jk)
  redis.call('ZREM', started_key(q), member)
  redis.call('HSET', jk, 'status', 'canceled', 'ended_at', now_iso)
  redis.call('ZADD', canceled_key(q), now, id)
  redis.call('EXPIRE', jk, ttl)
  add_result(id, '3', 'canceled', worker, '', '', member, t0, t1, ttl)
  record(id, 'canceled', 'worker', worker)
end
