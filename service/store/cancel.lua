#!lua flags=allow-oom
-- include: _transitions _dependents
-- DELETE /jobs/{id}. ARGV: the key prefix, id, now, now_iso, the retention limits. A queued,
-- scheduled or deferred job is canceled at once (its dependents then too: see `settle`); a
-- started one gets a `stop-job` command on its worker's channel (RQ's), and ends canceled when
-- the worker stops it. Returns {outcome, status}:
-- canceled | canceling | conflict | missing. Runs on a full Redis: a cancel moves a job and
-- frees its place, and must not wait for memory.
local id, now, now_iso = ARGV[2], tonumber(ARGV[3]), ARGV[4]
set_limits(ARGV, 5)
local jk = job_key(id)
local f = redis.call('HMGET', jk, 'status', 'origin', 'worker_name')
local status, q = f[1], f[2]
if not status then return {'missing', ''} end
local removed = 0
if status == 'queued' then
  removed = redis.call('LREM', queue_key(q), 1, id)
elseif status == 'scheduled' then
  removed = redis.call('ZREM', scheduled_key(q), id)
elseif status == 'deferred' then
  removed = undefer(id, q)
elseif status == 'started' then
  redis.call('HSET', jk, 'cancel_requested', now_iso)
  redis.call('PUBLISH', command_channel(f[3] or ''),
    '{"command": "stop-job", "job_id": "' .. id .. '"}')
  return {'canceling', status}
end
if removed == 0 then return {'conflict', status} end
cancel(jk, id, q, '', '', ARGV[3], ARGV[3], now_iso, now)
settle(id, now, now_iso, failure_ttl)  -- its dependents, if any
return {'canceled', 'canceled'}
