"""Every job state transition, as a Lua script: each runs atomically in one round trip.

The scripts write RQ 3's data model (see `jobs.py` and README "Redis data model"):
job hash `rq:job:<id>`, queue list `rq:queue:<q>`, started registry `rq:wip:<q>` holding
`<id>:<execution id>`, finished/failed registries, and the results stream `rq:results:<id>`.
"""

from __future__ import annotations

from service import constants

# Every push onto a queue also leaves a wake-up token in `rq:wake:<q>`, where idle workers
# block (BLPOP): one token wakes one worker, not all of them. Tokens are only hints; the
# queue list is the truth, and a worker that finds nothing goes back to waiting.
_PUSH = f"""
local function push(q, id, front)
  redis.call(front and 'LPUSH' or 'RPUSH', 'rq:queue:' .. q, id)
  redis.call('LPUSH', 'rq:wake:' .. q, 1)
  redis.call('LTRIM', 'rq:wake:' .. q, 0, {constants.WAKE_TOKENS_MAX - 1})
end
"""

# Shared helpers, prepended to every script that changes a job's state after it started.
# ARGV conventions for them: now_iso, now (int seconds), result_ttl, failure_ttl.
_TRANSITIONS = (
    _PUSH
    + """
local function queue_of(jk) return redis.call('HGET', jk, 'origin') end

local function add_result(id, kind, worker, field, value, exec, t0, t1, ttl)
  local rk = 'rq:results:' .. id
  if field ~= '' then
    redis.call('XADD', rk, 'MAXLEN', '~', 10, '*', 'type', kind, 'worker_name', worker,
      field, value, 'execution_id', exec, 'execution_started_at', t0, 'execution_ended_at', t1)
  else
    redis.call('XADD', rk, 'MAXLEN', '~', 10, '*', 'type', kind, 'worker_name', worker,
      'execution_id', exec, 'execution_started_at', t0, 'execution_ended_at', t1)
  end
  redis.call('EXPIRE', rk, ttl)
end

local function finish(id, member, worker, value, t0, t1, now_iso, now, ttl)
  local jk = 'rq:job:' .. id
  local q = queue_of(jk)
  redis.call('ZREM', 'rq:wip:' .. q, member)
  redis.call('HSET', jk, 'status', 'finished', 'ended_at', now_iso, 'last_heartbeat', now_iso)
  redis.call('ZADD', 'rq:finished:' .. q, now + ttl, id)
  redis.call('EXPIRE', jk, ttl)
  add_result(id, '1', worker, value ~= '' and 'return_value' or '', value, member, t0, t1, ttl)
end

-- A failed attempt: re-queued while retries are left, else moved to the failed registry.
local function fail(id, member, worker, exc, t0, t1, now_iso, now, ttl)
  local jk = 'rq:job:' .. id
  local q = queue_of(jk)
  redis.call('ZREM', 'rq:wip:' .. q, member)
  local left = tonumber(redis.call('HGET', jk, 'retries_left') or '0')
  if left > 0 then
    redis.call('HSET', jk, 'status', 'queued', 'retries_left', left - 1, 'worker_name', '',
      'enqueued_at', now_iso)
    push(q, id, false)
    add_result(id, '4', worker, 'exc_string', exc, member, t0, t1, ttl)
    return 'retried'
  end
  redis.call('HSET', jk, 'status', 'failed', 'ended_at', now_iso, 'last_heartbeat', now_iso)
  redis.call('ZADD', 'rq:failed:' .. q, now + ttl, id)
  redis.call('EXPIRE', jk, ttl)
  add_result(id, '2', worker, 'exc_string', exc, member, t0, t1, ttl)
  return 'failed'
end

-- Put a started job back at the head of its queue, not counted as an attempt.
local function interrupt(id, member)
  local jk = 'rq:job:' .. id
  local q = queue_of(jk)
  if redis.call('ZREM', 'rq:wip:' .. q, member) == 0 then return 0 end
  if redis.call('HGET', jk, 'status') ~= 'started' then return 0 end
  redis.call('HINCRBY', jk, 'attempts', -1)
  redis.call('HSET', jk, 'status', 'queued', 'worker_name', '')
  push(q, id, true)
  return 1
end
"""
)

# KEYS: rq:queues. ARGV: now_iso, result_ttl, failure_ttl, then per job: id, queue, type,
# data, timeout, retries_left. Writes the job hash as RQ's enqueue does, then pushes it.
PUBLISH = (
    _PUSH
    + """
local now_iso, result_ttl, failure_ttl = ARGV[1], ARGV[2], ARGV[3]
local seen = {}
for i = 4, #ARGV, 6 do
  local id, q = ARGV[i], ARGV[i + 1]
  redis.call('HSET', 'rq:job:' .. id, 'status', 'queued', 'created_at', now_iso,
    'enqueued_at', now_iso, 'data', ARGV[i + 3], 'origin', q, 'description', ARGV[i + 2],
    'timeout', ARGV[i + 4], 'result_ttl', result_ttl, 'failure_ttl', failure_ttl,
    'attempts', 0, 'retries_left', ARGV[i + 5])
  push(q, id, false)
  if not seen[q] then
    redis.call('SADD', KEYS[1], 'rq:queue:' .. q)
    seen[q] = true
  end
end
return (#ARGV - 3) / 6
"""
)

# KEYS: queue, started registry. ARGV: count, worker name, now_iso, registry score, execution
# id prefix. Returns per claimed job: id, member, data, timeout, attempt.
CLAIM = """
local ids = redis.call('LPOP', KEYS[1], ARGV[1])
if not ids then return {} end
local out = {}
for i, id in ipairs(ids) do
  local jk = 'rq:job:' .. id
  local f = redis.call('HMGET', jk, 'status', 'data', 'timeout', 'attempts')
  if f[1] == 'queued' then
    local attempt = tonumber(f[4] or '0') + 1
    local member = id .. ':' .. ARGV[5] .. i
    redis.call('HSET', jk, 'status', 'started', 'started_at', ARGV[3], 'last_heartbeat', ARGV[3],
      'worker_name', ARGV[2], 'attempts', attempt)
    redis.call('PERSIST', jk)
    redis.call('ZADD', KEYS[2], ARGV[4], member)
    out[#out + 1] = {id, member, f[2], f[3] or '-1', attempt}
  end
end
return out
"""

# ARGV: worker, now_iso, now, result_ttl, failure_ttl, then per job 6 values:
# outcome (ok|fail|interrupt), id, member, value (b64 result or exc), started, ended.
COMPLETE = (
    _TRANSITIONS
    + """
local worker, now_iso, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local result_ttl, failure_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local counts = {ok = 0, failed = 0, retried = 0, interrupted = 0}
for i = 6, #ARGV, 6 do
  local outcome, id, member = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local value, t0, t1 = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  if outcome == 'ok' then
    finish(id, member, worker, value, t0, t1, now_iso, now, result_ttl)
    counts.ok = counts.ok + 1
  elseif outcome == 'fail' then
    local r = fail(id, member, worker, value, t0, t1, now_iso, now, failure_ttl)
    counts[r] = counts[r] + 1
  else
    counts.interrupted = counts.interrupted + interrupt(id, member)
  end
end
return {counts.ok, counts.failed, counts.retried, counts.interrupted}
"""
)

# Jobs whose worker is gone. KEYS: started registry. ARGV: now_iso, now, result_ttl,
# failure_ttl, owner ('' = every entry whose heartbeat expired), mode (lost|interrupted),
# max crashes, exc (b64 zlib text for a lost worker), current (the job the dead process was
# running, '' if unknown).
# lost: the running job is re-delivered (not counted against its retries) until it has
# crashed its worker MAX_CRASHES times, then failed; the dead process's other claimed jobs never
# started and go back to the head of the queue. interrupted: all go back to the head.
RECOVER = (
    _TRANSITIONS
    + """
local now_iso, now, failure_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local owner, mode, max_crashes, exc = ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local current = ARGV[9]
local members
if owner == '' then
  members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
else
  members = redis.call('ZRANGE', KEYS[1], 0, -1)
end
local counts = {failed = 0, redelivered = 0, interrupted = 0}
for _, member in ipairs(members) do
  local id = string.match(member, '^[^:]+')
  local jk = 'rq:job:' .. id
  local who = redis.call('HGET', jk, 'worker_name')
  if owner == '' or who == owner then
    if redis.call('HGET', jk, 'status') ~= 'started' then
      redis.call('ZREM', KEYS[1], member)
    elseif mode == 'interrupted' or (current ~= '' and id ~= current) then
      counts.interrupted = counts.interrupted + interrupt(id, member)
    elseif redis.call('HINCRBY', jk, 'crashes', 1) >= max_crashes then
      redis.call('HSET', jk, 'retries_left', 0)
      fail(id, member, who or '', exc, ARGV[2], ARGV[2], now_iso, now, failure_ttl)
      counts.failed = counts.failed + 1
    else
      redis.call('ZREM', KEYS[1], member)
      redis.call('HSET', jk, 'status', 'queued', 'worker_name', '', 'enqueued_at', now_iso)
      push(queue_of(jk), id, false)
      add_result(id, '4', who or '', 'exc_string', exc, member, ARGV[2], ARGV[2], failure_ttl)
      counts.redelivered = counts.redelivered + 1
    end
  end
end
return {counts.failed, counts.redelivered, counts.interrupted}
"""
)
