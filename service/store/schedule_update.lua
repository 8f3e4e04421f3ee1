#!lua
-- Changes the definition of a schedule created through the API; its next fire time starts
-- again from the new definition's (ARGV[4]), but a paused one stays paused (scored +inf).
-- A schedule the code declares is refused: the code would put it back within a minute.
-- ARGV: the key prefix, its id, its definition (JSON), its next fire time. Returns 'updated',
-- 'missing' or 'code'.
local id, spec, first = ARGV[2], ARGV[3], ARGV[4]
local key = schedule_key(id)
if redis.call('EXISTS', key) == 0 then return 'missing' end
if redis.call('HGET', key, 'origin') ~= 'api' then return 'code' end
redis.call('HSET', key, 'spec', spec, 'next', first)
if redis.call('HEXISTS', key, 'pause') == 0 then
  redis.call('ZADD', SCHEDULES_KEY, first, id)
end
return 'updated'
