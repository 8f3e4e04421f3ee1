#!lua
-- Declares a schedule, or changes its definition. ARGV: the key prefix, its id, its definition
-- (JSON), and its first fire time, used only when the definition is new or changed: one that
-- has not changed keeps its next fire time, so the containers that start (or restart) at any
-- time never move it. Returns 'new', 'same' or 'changed'.
local id, spec, first = ARGV[2], ARGV[3], ARGV[4]
local key = schedule_key(id)
local current = redis.call('HGET', key, 'spec')
if current == spec then
  if not redis.call('ZSCORE', SCHEDULES_KEY, id) then
    redis.call('ZADD', SCHEDULES_KEY, redis.call('HGET', key, 'next') or first, id)
  end
  return 'same'
end
redis.call('HSET', key, 'spec', spec, 'next', first)
redis.call('ZADD', SCHEDULES_KEY, first, id)
return current and 'changed' or 'new'
