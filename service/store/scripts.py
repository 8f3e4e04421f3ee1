"""Every job state transition, as a Lua script: each runs atomically in one round trip.

The scripts write RQ 3's data model (see `jobs.py` and README "Redis data model"): job hash
`rq:job:<id>`, queue list `rq:queue:<q>`, started registry `rq:wip:<q>` holding
`<id>:<execution id>`, scheduled/finished/failed/canceled registries, and the results stream
`rq:results:<id>`, one entry per attempt, with the reason it ended.
"""

from __future__ import annotations

from service.config import constants

# Redis 7 script flags, the first line of each script (service/store/lua.py turns it into a comment
# for older servers). Without `allow-oom`, Redis refuses the whole script, before it starts,
# while its used memory is over `maxmemory`: scripts that add data whose size a client controls,
# or that start new work, so Redis passes its limit by one call's writes at most. The others
# declare `allow-oom`, each saying why it must run on a full Redis.
_REFUSED_WHEN_FULL = "#!lua\n"
_RUNS_WHEN_FULL = "#!lua flags=allow-oom\n"

# Job history: while an API or a history shipper with MONGODB_URI runs, it keeps
# `rq:history:on` alive and every state change is appended to the `rq:history` stream, in the
# same atomic script as the change itself; the shipper moves them to MongoDB in bulk
# (service/history/shipper.py). Events may wait long (no worker running, MongoDB down): at
# HISTORY_BUFFER_MAX events the oldest are trimmed and counted in `rq:history:dropped`. XLEN
# is O(1), and read once per script call.
_HISTORY = f"""
local history_on = redis.call('EXISTS', 'rq:history:on') == 1
local history_len = history_on and redis.call('XLEN', 'rq:history') or 0
local history_max = {constants.HISTORY_BUFFER_MAX}
local function record(id, status, ...)
  if history_on then
    if history_len >= history_max then
      redis.call('XTRIM', 'rq:history', 'MAXLEN', history_max - 1)
      redis.call('INCRBY', 'rq:history:dropped', history_len - history_max + 1)
      history_len = history_max - 1
    end
    redis.call('XADD', 'rq:history', '*', 'id', id, 'status', status, ...)
    history_len = history_len + 1
  end
end
"""

# Every push onto a queue also leaves a wake-up token in `rq:wake:<q>`, where idle workers
# block (BLPOP): one token wakes one worker, not all of them. Tokens are only hints; the
# queue list is the truth, and a worker that finds nothing goes back to waiting.
_PUSH = (
    _HISTORY
    + f"""
local function push(q, id, front)
  redis.call(front and 'LPUSH' or 'RPUSH', 'rq:queue:' .. q, id)
  redis.call('LPUSH', 'rq:wake:' .. q, 1)
  redis.call('LTRIM', 'rq:wake:' .. q, 0, {constants.WAKE_TOKENS_MAX - 1})
end
"""
)

# Shared by the scripts that end an attempt. `now` is epoch seconds, `now_iso` RQ's format.
# Each such script first calls set_limits with the operator's retention limits, three
# arguments in the order of settings.Retention.args(): MAX_RESULT_TTL, MAX_FAILURE_TTL,
# DEAD_MAX_JOBS.
_TRANSITIONS = (
    _PUSH
    + f"""
local limits = {{}}
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
  return ttl_of(jk, 'result_ttl', {constants.RESULT_TTL}, limits.result_ttl)
end

local function failure_ttl(jk)
  return ttl_of(jk, 'failure_ttl', {constants.FAILURE_TTL}, limits.failure_ttl)
end

-- DEAD_MAX_JOBS, before a job joins the failed registry of its queue: entries already expired
-- go, then the lowest-scored (the soonest to expire: the oldest failures among jobs that share
-- a failure_ttl) until there is room for it; at most {constants.DEAD_TRIM_MAX} of each, so a
-- lowered limit is reached over a few failures, never in one long script. A dead job goes with
-- its hash and results stream; those removed for room are counted in `rq:dead:trimmed`.
local function drop_dead(key, q, member)
  redis.call('ZREM', key, member)
  local jk = 'rq:job:' .. member
  local f = redis.call('HMGET', jk, 'status', 'origin')
  if f[1] ~= 'failed' or f[2] ~= q then return 0 end  -- a stale entry: its job moved on
  redis.call('DEL', jk, 'rq:results:' .. member)
  return 1
end

local function make_room(q, id, now)
  local key = 'rq:failed:' .. q
  local expired = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. now,
    'LIMIT', 0, {constants.DEAD_TRIM_MAX})
  for _, member in ipairs(expired) do drop_dead(key, q, member) end
  local joining = redis.call('ZSCORE', key, id) and 0 or 1
  local over = math.min(redis.call('ZCARD', key) + joining - limits.dead_max,
    {constants.DEAD_TRIM_MAX})
  if over <= 0 then return end
  local removed, trimmed = 0, 0
  for _, member in ipairs(redis.call('ZRANGE', key, 0, over)) do  -- one more: `id` is kept
    if member ~= id and removed < over then
      removed = removed + 1
      trimmed = trimmed + drop_dead(key, q, member)
    end
  end
  if trimmed > 0 then redis.call('INCRBY', '{constants.DEAD_TRIMMED_KEY}', trimmed) end
end

-- One results-stream entry per attempt: RQ's Result (type 1 ok, 2 failed, 3 stopped,
-- 4 retried) plus `reason`: exception, timeout, worker_lost, interrupted or canceled.
local function add_result(id, kind, reason, worker, field, value, exec, t0, t1, ttl)
  local rk = 'rq:results:' .. id
  local entry = {{'type', kind, 'worker_name', worker, 'execution_id', exec,
    'execution_started_at', t0, 'execution_ended_at', t1}}
  if reason ~= '' then table.insert(entry, 'reason'); table.insert(entry, reason) end
  if field ~= '' then table.insert(entry, field); table.insert(entry, value) end
  redis.call('XADD', rk, 'MAXLEN', '~', {constants.RESULTS_KEPT}, '*', unpack(entry))
  redis.call('EXPIRE', rk, ttl)
end

local function finish(jk, id, q, member, worker, value, t0, t1, now_iso, now)
  local ttl = result_ttl(jk)
  redis.call('ZREM', 'rq:wip:' .. q, member)
  redis.call('HSET', jk, 'status', 'finished', 'ended_at', now_iso, 'last_heartbeat', now_iso)
  redis.call('ZADD', 'rq:finished:' .. q, now + ttl, id)
  redis.call('EXPIRE', jk, ttl)
  add_result(id, '1', '', worker, value ~= '' and 'return_value' or '', value, member, t0, t1, ttl)
  record(id, 'finished', 'worker', worker, 'result', value, 't0', t0, 't1', t1)
end

-- A failed attempt: retried after `delay` seconds (scheduled, as RQ's retry intervals are)
-- while retries are left, else moved to the failed registry, the dead-letter queue.
local function fail(jk, id, q, member, worker, exc, reason, delay, t0, t1, now_iso, now)
  local ttl = failure_ttl(jk)
  redis.call('ZREM', 'rq:wip:' .. q, member)
  local left = tonumber(redis.call('HGET', jk, 'retries_left') or '0') or 0
  if left > 0 then
    redis.call('HSET', jk, 'retries_left', left - 1, 'worker_name', '')
    if delay > 0 then
      redis.call('HSET', jk, 'status', 'scheduled', 'run_at', now + delay)
      redis.call('ZADD', 'rq:scheduled:' .. q, now + delay, id)
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
  redis.call('ZADD', 'rq:failed:' .. q, now + ttl, id)
  redis.call('EXPIRE', jk, ttl)
  add_result(id, '2', reason, worker, 'exc_string', exc, member, t0, t1, ttl)
  record(id, 'dead', 'worker', worker, 'reason', reason, 'error', exc, 't0', t0, 't1', t1)
  return 'failed'
end

-- Back at the head of its queue, not counted as an attempt (shutdown, or never started).
local function interrupt(jk, id, q, member, worker, t0, t1, keep)
  if redis.call('ZREM', 'rq:wip:' .. q, member) == 0 then return 0 end
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
  redis.call('ZREM', 'rq:wip:' .. q, member)
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
  redis.call('ZREM', 'rq:wip:' .. q, member)
  redis.call('HSET', jk, 'status', 'canceled', 'ended_at', now_iso)
  redis.call('ZADD', 'rq:canceled:' .. q, now, id)
  redis.call('EXPIRE', jk, ttl)
  add_result(id, '3', 'canceled', worker, '', '', member, t0, t1, ttl)
  record(id, 'canceled', 'worker', worker)
end
"""
)

# Backpressure (MAX_BACKLOG): a request is refused whole, before anything is written, when it
# would take a queue's backlog (its waiting jobs, over its three priority lists) past `limit`.
# Jobs scheduled for later do not add to it, but a queue already at its limit takes none.
# Checked inside the publishing script, so parallel publishers cannot overshoot.
_BACKLOG = """
local function base_of(q)
  return string.match(q, '^(.*)%.high$') or string.match(q, '^(.*)%.low$') or q
end

local function over_limit(argv, first, limit)
  if limit <= 0 then return nil end
  local order, adding = {}, {}
  for i = first, #argv, 10 do
    local base = base_of(argv[i + 1])
    if not adding[base] then order[#order + 1] = base; adding[base] = 0 end
    if argv[i + 9] == '' then adding[base] = adding[base] + 1 end
  end
  for _, base in ipairs(order) do
    local waiting = redis.call('LLEN', 'rq:queue:' .. base .. '.high')
      + redis.call('LLEN', 'rq:queue:' .. base) + redis.call('LLEN', 'rq:queue:' .. base .. '.low')
    if waiting + math.max(adding[base], 1) > limit then return {base, waiting} end
  end
  return nil
end
"""

# Writes each job's hash as RQ's enqueue does, then pushes it, or (run_at) adds it to the
# scheduled registry as RQ's enqueue_at does. argv[first]: now_iso, argv[first + 1]: the W3C
# traceparent of the enqueue span, stored on every job ('' = tracing off: no field),
# argv[first + 2]: MAX_BACKLOG (0 = off), then per job: id, queue, type, data, timeout,
# retries_left, backoff, result_ttl, failure_ttl, run_at ('' = now). Returns nil, or
# {queue, its backlog} when the backlog refused the request (nothing written). `seen`: the
# queues this script has already added to `rq:queues` (one SADD per queue, not per job).
# A full Redis (maxmemory, noeviction) refuses the first HSET, and with it the whole script:
# Redis refuses a memory-growing command in a script only while the script has written nothing.
_PUBLISH = (
    _PUSH
    + _BACKLOG
    + """
local function publish(argv, first, seen)
  local now_iso, traceparent = argv[first], argv[first + 1]
  local full = over_limit(argv, first + 3, tonumber(argv[first + 2]))
  if full then return full end
  for i = first + 3, #argv, 10 do
    local id, q, run_at = argv[i], argv[i + 1], argv[i + 9]
    local jk = 'rq:job:' .. id
    redis.call('HSET', jk, 'created_at', now_iso, 'data', argv[i + 3], 'origin', q,
      'description', argv[i + 2], 'timeout', argv[i + 4], 'retries_left', argv[i + 5],
      'max_retries', argv[i + 5], 'backoff', argv[i + 6], 'result_ttl', argv[i + 7],
      'failure_ttl', argv[i + 8], 'attempts', 0)
    if traceparent ~= '' then redis.call('HSET', jk, 'traceparent', traceparent) end
    if run_at == '' then
      redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', now_iso)
      push(q, id, false)
    else
      redis.call('HSET', jk, 'status', 'scheduled', 'run_at', run_at)
      redis.call('ZADD', 'rq:scheduled:' .. q, run_at, id)
    end
    record(id, run_at == '' and 'queued' or 'scheduled', 'type', argv[i + 2], 'queue', q,
      'data', argv[i + 3], 'run_at', run_at)
    if not seen[q] then
      redis.call('SADD', 'rq:queues', 'rq:queue:' .. q)
      seen[q] = true
    end
  end
  return nil
end
"""
)

# ARGV: as _PUBLISH's, from 1. Returns 1, or {queue, backlog} if MAX_BACKLOG refused it.
PUBLISH = _REFUSED_WHEN_FULL + _PUBLISH + "return publish(ARGV, 1, {}) or 1\n"

# Single jobs of concurrent requests, sent together (store.Coalescer). ARGV: as _PUBLISH's;
# each job is admitted or refused alone (MAX_BACKLOG), in order, as if published one by one.
# Returns, per job, 1 or {queue, backlog}.
PUBLISH_EACH = (
    _REFUSED_WHEN_FULL
    + _PUBLISH
    + """
local outcomes, seen = {}, {}
for i = 4, #ARGV, 10 do
  local one = {ARGV[1], ARGV[2], ARGV[3], unpack(ARGV, i, i + 9)}
  outcomes[#outcomes + 1] = publish(one, 1, seen) or 1
end
return outcomes
"""
)

# The same for one job under an idempotency key. ARGV: key, fingerprint of the request,
# key TTL, then as _PUBLISH's. Returns {id, 'new' | 'same' | 'different'}: an existing key
# returns its job's id, and whether this request is the same as the one that made it; or
# {queue, 'full', backlog} when MAX_BACKLOG refused a new job (a repeat is still answered).
PUBLISH_ONCE = (
    _REFUSED_WHEN_FULL
    + _PUBLISH
    + """
local key, fingerprint = 'rq:idempotency:' .. ARGV[1], ARGV[2]
local existing = redis.call('HMGET', key, 'id', 'fingerprint')
if existing[1] then
  return {existing[1], existing[2] == fingerprint and 'same' or 'different'}
end
local full = publish(ARGV, 4, {})
if full then return {full[1], 'full', full[2]} end
redis.call('HSET', key, 'id', ARGV[7], 'fingerprint', fingerprint)
redis.call('EXPIRE', key, ARGV[3])
return {ARGV[7], 'new'}
"""
)

# DELETE /jobs/{id}. ARGV: id, now, now_iso, the retention limits. A queued or scheduled job
# is canceled at once; a started one gets a `stop-job` command on its worker's channel (RQ's),
# and ends canceled when the worker stops it. Returns {outcome, status}: canceled | canceling
# | conflict | missing. Runs on a full Redis: a cancel moves a job and frees its place, and
# must not wait for memory.
CANCEL = (
    _RUNS_WHEN_FULL
    + _TRANSITIONS
    + """
local id, now, now_iso = ARGV[1], tonumber(ARGV[2]), ARGV[3]
set_limits(ARGV, 4)
local jk = 'rq:job:' .. id
local f = redis.call('HMGET', jk, 'status', 'origin', 'worker_name')
local status, q = f[1], f[2]
if not status then return {'missing', ''} end
local removed = 0
if status == 'queued' then
  removed = redis.call('LREM', 'rq:queue:' .. q, 1, id)
elseif status == 'scheduled' then
  removed = redis.call('ZREM', 'rq:scheduled:' .. q, id)
elseif status == 'started' then
  redis.call('HSET', jk, 'cancel_requested', now_iso)
  redis.call('PUBLISH', 'rq:pubsub:' .. (f[3] or ''),
    '{"command": "stop-job", "job_id": "' .. id .. '"}')
  return {'canceling', status}
end
if removed == 0 then return {'conflict', status} end
cancel(jk, id, q, '', '', ARGV[2], ARGV[2], now_iso, now)
return {'canceled', 'canceled'}
"""
)

# ARGV: count, worker name, now_iso, started-registry score, execution id prefix, then the
# queues in drain order (high before default before low). Returns per claimed job:
# id, member, data, timeout, attempt, queue, backoff, enqueued_at, traceparent ('' if none),
# crashes (how many runners it has killed: above 0, it runs alone).
CLAIM = (
    _REFUSED_WHEN_FULL
    + _HISTORY
    + """
local want = tonumber(ARGV[1])
local out = {}
for qi = 6, #ARGV do
  if want <= 0 then break end
  local q = ARGV[qi]
  local ids = redis.call('LPOP', 'rq:queue:' .. q, want)
  if ids then
    want = want - #ids
    for _, id in ipairs(ids) do
      local jk = 'rq:job:' .. id
      local f = redis.call('HMGET', jk, 'status', 'data', 'timeout', 'attempts', 'backoff',
        'enqueued_at', 'traceparent', 'crashes')
      if f[1] == 'queued' then  -- skip ids whose job expired, was deleted or canceled
        local attempt = tonumber(f[4] or '0') + 1
        local member = id .. ':' .. ARGV[5] .. (#out + 1)
        redis.call('HSET', jk, 'status', 'started', 'started_at', ARGV[3],
          'last_heartbeat', ARGV[3], 'worker_name', ARGV[2], 'attempts', attempt)
        redis.call('PERSIST', jk)
        redis.call('ZADD', 'rq:wip:' .. q, ARGV[4], member)
        out[#out + 1] = {id, member, f[2], f[3] or '-1', attempt, q, f[5] or '', f[6] or '',
          f[7] or '', tonumber(f[8] or '0') or 0}
        record(id, 'started', 'worker', ARGV[2], 'attempt', attempt)
      end
    end
  end
end
return out
"""
)

# ARGV: worker, now_iso, now, the retention limits, max crashes, then per job 9 values:
# outcome, id, queue, member, value (b64 result or exc), started, ended, retry delay, reason.
# Outcomes: ok, fail (retried by its policy), reject (failed without retry: an unknown type or
# an invalid payload), crash (its runner died: see `crashed`), interrupt, cancel, skip (a
# claimed job put back that never started, recording nothing). Returns, per job, what became
# of it: finished | retried | failed (dead-lettered) | canceled | interrupted | '' (a skip, or
# a job whose claim this worker no longer holds: nothing is recorded).
COMPLETE = (
    _REFUSED_WHEN_FULL
    + _TRANSITIONS
    + """
local worker, now_iso, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
set_limits(ARGV, 4)
local max_crashes = tonumber(ARGV[7])
local results = {}
for i = 8, #ARGV, 9 do
  local outcome, id, q, member = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local value, t0, t1 = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local delay, reason = tonumber(ARGV[i + 7]), ARGV[i + 8]
  local jk = 'rq:job:' .. id
  local result = ''
  if not redis.call('ZSCORE', 'rq:wip:' .. q, member) then
    -- Not ours any more: recovered after our heartbeat expired, or already recorded (a retried
    -- call whose first reply was lost). Recording it again would run its transition twice.
  elseif outcome == 'ok' then
    finish(jk, id, q, member, worker, value, t0, t1, now_iso, now)
    result = 'finished'
  elseif outcome == 'fail' or outcome == 'reject' then
    if outcome == 'reject' then redis.call('HSET', jk, 'retries_left', 0) end
    result = fail(jk, id, q, member, worker, value, reason, delay, t0, t1, now_iso, now)
  elseif outcome == 'crash' then
    result = crashed(jk, id, q, member, worker, value, max_crashes, t0, t1, now_iso, now)
  elseif outcome == 'cancel' then
    cancel(jk, id, q, member, worker, t0, t1, now_iso, now)
    result = 'canceled'
  else
    local n = interrupt(jk, id, q, member, worker, t0, t1, outcome == 'interrupt')
    result = (n == 1 and outcome == 'interrupt') and 'interrupted' or ''
  end
  results[#results + 1] = result
end
return results
"""
)

# Jobs whose worker is gone. ARGV: now_iso, now, owner ('' = every entry whose heartbeat
# expired), mode (lost|interrupted), max crashes, exc (b64 zlib text for a lost worker),
# running (the ids of the jobs the dead process was running, comma-separated), the retention
# limits, then the queues. lost: each running job is re-delivered (not counted against its
# retries) until it has crashed its worker MAX_CRASHES times, then failed (see `crashed`); the
# owner's other claimed jobs never started and go back to the head of the queue untouched.
# When a whole container died (owner ''), nobody knows which of its jobs were running: each
# one it held is blamed (a process holds little more than it runs: jobs claimed ahead go back
# when they wait). A blamed job runs alone afterwards (the worker isolates a job with
# crashes), so an innocent neighbour of a poison job finishes there and only the guilty one
# keeps crashing. interrupted: all go back to the head, not counted.
# Returns {failed, redelivered, interrupted, {type, 'failed' | 'retried', ...} per blamed job}.
# Runs on a full Redis: it only moves jobs of dead workers back, and a refused recovery would
# leave them started, run by no one.
RECOVER = (
    _RUNS_WHEN_FULL
    + _TRANSITIONS
    + """
local now_iso, now, owner, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local max_crashes, exc = tonumber(ARGV[5]), ARGV[6]
local running = {}
for id in string.gmatch(ARGV[7], '[^,]+') do running[id] = true end
set_limits(ARGV, 8)
local counts = {failed = 0, redelivered = 0, interrupted = 0}
local lost = {}  -- per job blamed for the crash: its type, then 'failed' or 'retried'
for qi = 11, #ARGV do
  local q = ARGV[qi]
  local wip = 'rq:wip:' .. q
  local members
  if owner == '' then
    members = redis.call('ZRANGEBYSCORE', wip, '-inf', now)
  else
    members = redis.call('ZRANGE', wip, 0, -1)
  end
  for _, member in ipairs(members) do
    local id = string.match(member, '^[^:]+')
    local jk = 'rq:job:' .. id
    local f = redis.call('HMGET', jk, 'worker_name', 'status')
    local who = f[1] or ''
    if owner ~= '' and who ~= owner then
      -- another worker's job
    elseif f[2] ~= 'started' then
      redis.call('ZREM', wip, member)
    elseif mode == 'interrupted' or (owner ~= '' and not running[id]) then
      local n = interrupt(jk, id, q, member, who, ARGV[2], ARGV[2], mode == 'interrupted')
      counts.interrupted = counts.interrupted + n
    else
      local fate = crashed(jk, id, q, member, who, exc, max_crashes, ARGV[2], ARGV[2],
        now_iso, now)
      if fate == 'failed' then
        counts.failed = counts.failed + 1
      else
        counts.redelivered = counts.redelivered + 1
      end
      lost[#lost + 1] = redis.call('HGET', jk, 'description') or ''
      lost[#lost + 1] = fate
    end
  end
end
return {counts.failed, counts.redelivered, counts.interrupted, lost}
"""
)

# A worker process's heartbeat: its registration (as RQ's), and the started-registry entries
# of the jobs it holds pushed ahead of the clock (XX: never re-adds a recovered entry).
# ARGV: worker key, ttl, registry score, then the registration's fields as name/value pairs
# up to '--', then the queues it serves up to '--', then queue/member pairs of held jobs.
# Runs on a full Redis: a refused heartbeat would make running jobs look abandoned, and run
# them twice; it only replaces values in place. (On Redis 6.2, which ignores flags, EXPIRE
# coming first does the same: a write that cannot grow memory, after which Redis lets the
# script's memory-growing commands run even when it is full.)
HEARTBEAT = (
    _RUNS_WHEN_FULL
    + """
local key, ttl, score = ARGV[1], ARGV[2], ARGV[3]
redis.call('EXPIRE', key, ttl)
local i, fields = 4, {}
while ARGV[i] ~= '--' do fields[#fields + 1] = ARGV[i]; i = i + 1 end
redis.call('HSET', key, unpack(fields))
redis.call('EXPIRE', key, ttl)
redis.call('SADD', 'rq:workers', key)
i = i + 1
while ARGV[i] ~= '--' do
  redis.call('SADD', 'rq:workers:' .. ARGV[i], key)
  i = i + 1
end
for j = i + 1, #ARGV, 2 do
  redis.call('ZADD', 'rq:wip:' .. ARGV[j], 'XX', score, ARGV[j + 1])
end
return 1
"""
)

# Due scheduled jobs (delays, run_at, retry backoff) onto their queues. Any worker container
# runs it; ZREM decides which caller moves a job, so none is moved twice. ARGV: now, now_iso,
# then queue names. Returns {moved, next due epoch or ''}.
# Runs on a full Redis: it moves jobs accepted earlier from one key to another; refused, delays
# and retries would wait for memory that only running them frees.
PROMOTE = (
    _RUNS_WHEN_FULL
    + _PUSH
    + f"""
local now, now_iso = ARGV[1], ARGV[2]
local moved, next_due = 0, nil
for qi = 3, #ARGV do
  local q = ARGV[qi]
  local key = 'rq:scheduled:' .. q
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, {constants.PROMOTE_BATCH})
  for _, id in ipairs(due) do
    if redis.call('ZREM', key, id) == 1 then
      local jk = 'rq:job:' .. id
      if redis.call('HGET', jk, 'status') == 'scheduled' then
        redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', now_iso)
        push(q, id, false)
        record(id, 'queued')
        moved = moved + 1
      end
    end
  end
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] and (next_due == nil or tonumber(first[2]) < next_due) then
    next_due = tonumber(first[2])
  end
end
return {{moved, next_due and tostring(next_due) or ''}}
"""
)

# --- The dead-letter queue (service/store/dead_letters.py) -------------------------------------

# A job is dead while it is in its queue's failed registry with status `failed`.
_DEAD = """
local function dead_queue(id)
  local f = redis.call('HMGET', 'rq:job:' .. id, 'status', 'origin')
  if f[1] ~= 'failed' or not f[2] then return nil end
  if not redis.call('ZSCORE', 'rq:failed:' .. f[2], id) then return nil end
  return f[2]
end
"""

# ARGV: now_iso, then job ids. Each job still dead goes back on its queue at once, as new:
# queued, retries_left back to max_retries, crashes to 0, out of the failed registry, no
# expiry. Its attempts count and its results stream (the history; no expiry while it waits)
# are kept. Returns per id its queue, or '' if it was not dead.
# Runs on a full Redis: it moves jobs already stored back onto their queues, adding nothing a
# client sends (the retried jobs then wait for memory, as their claims are refused meanwhile).
DEAD_RETRY = (
    _RUNS_WHEN_FULL
    + _PUSH
    + _DEAD
    + """
local now_iso = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local q = dead_queue(id)
  out[i - 1] = q or ''
  if q then
    local jk = 'rq:job:' .. id
    redis.call('ZREM', 'rq:failed:' .. q, id)
    redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', now_iso, 'crashes', 0,
      'retries_left', redis.call('HGET', jk, 'max_retries') or 0, 'worker_name', '')
    redis.call('HDEL', jk, 'started_at', 'ended_at')
    redis.call('PERSIST', jk)
    redis.call('PERSIST', 'rq:results:' .. id)
    redis.call('SADD', 'rq:queues', 'rq:queue:' .. q)
    push(q, id, false)
    record(id, 'queued', 'reason', 'retried_from_dead_letter_queue')
  end
end
return out
"""
)

# ARGV: job ids. Each job still dead is deleted: its hash, its results stream and its
# failed-registry entry. Returns how many were.
# Runs on a full Redis: deleting frees memory, the way out of a full Redis.
DEAD_DELETE = (
    _RUNS_WHEN_FULL
    + _DEAD
    + """
local deleted = 0
for _, id in ipairs(ARGV) do
  local q = dead_queue(id)
  if q then
    redis.call('ZREM', 'rq:failed:' .. q, id)
    redis.call('DEL', 'rq:job:' .. id, 'rq:results:' .. id)
    deleted = deleted + 1
  end
end
return deleted
"""
)
