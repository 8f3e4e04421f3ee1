#!lua flags=allow-oom
-- include: _push _dead _dependents
-- ARGV: the key prefix, now_iso, then job ids. Each job still dead goes back on its queue at
-- once, as new: queued, retries_left back to max_retries, crashes to 0, out of the failed
-- registry, no expiry. Its attempts count and its results stream (the history; no expiry while
-- it waits) are kept. Returns per id its queue, or '' if it was not dead.
-- Runs on a full Redis: it moves jobs already stored back onto their queues, adding nothing a
-- client sends (the retried jobs then wait for memory, as their claims are refused meanwhile).
local now_iso = ARGV[2]
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local q = dead_queue(id)
  out[i - 2] = q or ''
  if q then
    local jk = job_key(id)
    redis.call('ZREM', failed_key(q), id)
    redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', now_iso, 'crashes', 0,
      'retries_left', redis.call('HGET', jk, 'max_retries') or 0, 'worker_name', '')
    redis.call('HDEL', jk, 'started_at', 'ended_at')
    redis.call('PERSIST', jk)
    redis.call('PERSIST', result_key(id))
    redis.call('SADD', QUEUES_KEY, queue_key(q))
    push(q, id, false)
    record(id, 'queued', 'reason', 'retried_from_dead_letter_queue')
    reopen(id, now_iso)  -- the dependents its failure canceled
  end
end
return out
