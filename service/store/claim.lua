#!lua
-- include: _history _worker_stats _limits
-- ARGV: the key prefix, count, worker name, now_iso, started-registry score, execution id
-- prefix, then the queues in drain order (high before default before low); a paused one (in
-- PAUSED_KEY) is skipped. Returns per claimed job (claim.py, `Claimed`): id, member, data,
-- timeout, attempt, queue, backoff, enqueued_at, traceparent ('' if none), crashes (how many
-- runners it has killed: above 0, it runs alone).
local want, worker, now_iso, score, exec = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local out = {}
-- Paused queues give nothing: one SMEMBERS per call (an empty set almost always), not per job.
local paused = {}
for _, q in ipairs(redis.call('SMEMBERS', PAUSED_KEY)) do paused[q] = true end
for qi = 7, #ARGV do
  if want <= 0 then break end
  local q = ARGV[qi]
  local ids = not paused[q] and redis.call('LPOP', queue_key(q), want)
  if ids then
    want = want - #ids
    for _, id in ipairs(ids) do
      local jk = job_key(id)
      local f = redis.call('HMGET', jk, 'status', 'data', 'timeout', 'attempts', 'backoff',
        'enqueued_at', 'traceparent', 'crashes')
      if f[1] == 'queued'  -- skip ids whose job expired, was deleted or canceled
        and not limit_holds(id, jk, q, f[2], id .. ':' .. exec .. (#out + 1), score) then
        local attempt = tonumber(f[4] or '0') + 1
        local member = id .. ':' .. exec .. (#out + 1)
        redis.call('HSET', jk, 'status', 'started', 'started_at', now_iso,
          'last_heartbeat', now_iso, 'worker_name', worker, 'attempts', attempt)
        redis.call('PERSIST', jk)
        redis.call('ZADD', started_key(q), score, member)
        out[#out + 1] = {id, member, f[2], f[3] or '-1', attempt, q, f[5] or '', f[6] or '',
          f[7] or '', tonumber(f[8] or '0') or 0}
        record(id, 'started', 'worker', worker, 'attempt', attempt)
      end
    end
  end
end
worker_claimed(worker, out)
return out
