-- include: _history
-- Every push onto a queue also leaves a wake-up token in wake_key(q), where idle workers
-- block (BLPOP): one token wakes one worker, not all of them. Tokens are only hints; the
-- queue list is the truth, and a worker that finds nothing goes back to waiting.
local function push(q, id, front)
  redis.call(front and 'LPUSH' or 'RPUSH', queue_key(q), id)
  redis.call('LPUSH', wake_key(q), 1)
  redis.call('LTRIM', wake_key(q), 0, WAKE_TOKENS_MAX - 1)
end
