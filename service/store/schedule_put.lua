#!lua
-- Declares a schedule of the code, or changes its definition. ARGV: the key prefix, its id, its
-- definition (JSON), and its first fire time, used only when the definition is new or changed:
-- one that has not changed keeps its next fire time, so the containers that start (or restart)
-- at any time never move it. A paused schedule stays paused (scored +inf: never due). An id an
-- API schedule holds is left alone: the code does not take over what a client created.
-- Returns 'new', 'same', 'changed' or 'taken'.
local id, spec, first = ARGV[2], ARGV[3], ARGV[4]
local key = schedule_key(id)
if redis.call('HGET', key, 'origin') == 'api' then return 'taken' end
local paused = redis.call('HEXISTS', key, 'pause') == 1
local current = redis.call('HGET', key, 'spec')
if current == spec then
  if not redis.call('ZSCORE', SCHEDULES_KEY, id) then
    local score = paused and '+inf' or (redis.call('HGET', key, 'next') or first)
    redis.call('ZADD', SCHEDULES_KEY, score, id)
  end
  return 'same'
end
redis.call('HSET', key, 'spec', spec, 'next', first)
redis.call('ZADD', SCHEDULES_KEY, paused and '+inf' or first, id)
return current and 'changed' or 'new'
