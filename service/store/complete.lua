#!lua
-- include: _transitions _worker_stats _dependents
-- ARGV: the key prefix, worker, now_iso, now, the retention limits, max crashes, then per job
-- nine values (complete.py, `Ending`): outcome, id, queue, member, value (b64 result or exc),
-- started, ended, retry delay, reason. Outcomes: ok, fail (retried by its policy), reject
-- (failed without retry: an unknown type or an invalid payload), crash (its runner died: see
-- `crashed`), interrupt, cancel, skip (a claimed job put back that never started, recording
-- nothing). Returns, per job, what became of it: finished | retried | failed (dead-lettered) |
-- canceled | interrupted | '' (a skip, or a job whose claim this worker no longer holds:
-- nothing is recorded).
local worker, now_iso, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
set_limits(ARGV, 5)
local max_crashes = tonumber(ARGV[8])
local results = {}
for i = 9, #ARGV, 9 do
  local outcome, id, q, member = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local value, t0, t1 = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local delay, reason = tonumber(ARGV[i + 7]), ARGV[i + 8]
  local jk = job_key(id)
  local result = ''
  if not redis.call('ZSCORE', started_key(q), member) then
    -- Not ours any more: recovered after our heartbeat expired, or already recorded (a retried
    -- call whose first reply was lost). Recording it again would run its transition twice.
    attempt_not_held()
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
  if result == 'finished' or result == 'failed' or result == 'canceled' then
    settle(id, now, now_iso, failure_ttl)  -- its dependents, if any
  end
  limit_release(jk, member)  -- whatever became of the attempt, it holds no lease now
  results[#results + 1] = result
  attempt_ended(id, result, t0, t1)
end
worker_ended(worker)
return results
