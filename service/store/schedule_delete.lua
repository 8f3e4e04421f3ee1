#!lua flags=allow-oom
-- Deletes a schedule created through the API, as one step (runs on a full Redis: it only
-- frees memory). A schedule the code declares is refused: the code would put it back within
-- a minute. A fire racing the deletion finds it gone and publishes nothing. ARGV: the key
-- prefix, its id. Returns 'deleted', 'missing' or 'code'.
local id = ARGV[2]
local key = schedule_key(id)
if redis.call('EXISTS', key) == 0 then return 'missing' end
if redis.call('HGET', key, 'origin') ~= 'api' then return 'code' end
redis.call('DEL', key)
redis.call('ZREM', SCHEDULES_KEY, id)
return 'deleted'
