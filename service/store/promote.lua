#!lua flags=allow-oom
-- include: _push
-- Due scheduled jobs (delays, run_at, retry backoff) onto their queues. Any worker container
-- runs it; ZREM decides which caller moves a job, so none is moved twice. ARGV: the key prefix,
-- now, now_iso, then queue names. Returns {moved, next due epoch or ''}.
-- Runs on a full Redis: it moves jobs accepted earlier from one key to another; refused, delays
-- and retries would wait for memory that only running them frees.
local now, now_iso = ARGV[2], ARGV[3]
local moved, next_due = 0, nil
for qi = 4, #ARGV do
  local q = ARGV[qi]
  local key = scheduled_key(q)
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, PROMOTE_BATCH)
  for _, id in ipairs(due) do
    if redis.call('ZREM', key, id) == 1 then
      local jk = job_key(id)
      if redis.call('HGET', jk, 'status') == 'scheduled' then
        redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', now_iso)
        push(q, id, redis.call('HGET', jk, 'limit_parked') == '1')  -- see _limits.lua
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
return {moved, next_due and tostring(next_due) or ''}
