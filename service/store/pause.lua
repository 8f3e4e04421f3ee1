#!lua flags=allow-oom
-- Pause or resume RQ queues: CLAIM skips a queue named in PAUSED_KEY. It runs on a full Redis
-- too (allow-oom): an incident is when a queue gets paused, and it writes at most a set member
-- and WAKE_TOKENS_MAX wake-up tokens per queue.
-- ARGV: the key prefix, '1' to pause or '0' to resume, then the queues (a named queue's three
-- priorities). Returns how many of them changed state.
-- A resumed queue with waiting jobs gets a wake-up token per job (WAKE_TOKENS_MAX at most), as
-- if they had just been pushed: idle workers claim them now, not at their next poll.
local pause = ARGV[2] == '1'
local changed = 0
for qi = 3, #ARGV do
  local q = ARGV[qi]
  if pause then
    changed = changed + redis.call('SADD', PAUSED_KEY, q)
  elseif redis.call('SREM', PAUSED_KEY, q) == 1 then
    changed = changed + 1
    local tokens = math.min(redis.call('LLEN', queue_key(q)), WAKE_TOKENS_MAX)
    for _ = 1, tokens do redis.call('LPUSH', wake_key(q), 1) end
    redis.call('LTRIM', wake_key(q), 0, WAKE_TOKENS_MAX - 1)
  end
end
return changed
