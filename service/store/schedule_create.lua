#!lua
-- Creates a schedule through the API, unless its id is taken (by the API or by the code).
-- ARGV: the key prefix, its id, its definition (JSON), its first fire time. The hash says
-- `origin` 'api', so the containers' clean-up of schedules the code no longer declares keeps
-- it. Returns 'created' or 'exists'.
local id, spec, first = ARGV[2], ARGV[3], ARGV[4]
local key = schedule_key(id)
if redis.call('EXISTS', key) == 1 then return 'exists' end
redis.call('HSET', key, 'spec', spec, 'next', first, 'origin', 'api', 'fired', 0, 'missed', 0)
redis.call('ZADD', SCHEDULES_KEY, first, id)
return 'created'
