#!lua flags=allow-oom
-- Pauses or resumes one schedule, of the code or of the API. A paused schedule stays in
-- SCHEDULES_KEY scored +inf, so it is never due and a fire racing the pause finds its time
-- moved and publishes nothing; its hash keeps `next`. Resuming scores it by `next` again: a
-- fire time that passed meanwhile is due at once, and its misfire policy decides what it
-- publishes. Runs on a full Redis (a field of a few bytes): pausing is what an incident needs.
-- ARGV: the key prefix, its id, '1' to pause or '0' to resume. Returns 'done' or 'missing'.
local id, pause = ARGV[2], ARGV[3] == '1'
local key = schedule_key(id)
local following = redis.call('HGET', key, 'next')
if not following then return 'missing' end
if pause then
  redis.call('HSET', key, 'pause', 1)
  redis.call('ZADD', SCHEDULES_KEY, '+inf', id)
else
  redis.call('HDEL', key, 'pause')
  redis.call('ZADD', SCHEDULES_KEY, following, id)
end
return 'done'
