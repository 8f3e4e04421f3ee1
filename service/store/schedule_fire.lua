#!lua
-- include: _publish_jobs
-- Claims one fire of a schedule and publishes its jobs, as one step: a compare-and-set of the
-- schedule's next fire time. Of several containers that read the same due fire, only the first
-- to get here publishes; the others find the fire time moved and publish nothing. A job whose
-- id exists already (its id derives from the schedule and the fire time) is not published
-- again. ARGV: the key prefix, the schedule's id, the fire time the firer read as due, the
-- next fire time to set, the latest fire time it publishes ('' for none), the fire times the
-- misfire policy dropped, how late that latest fire is published (seconds; '' for none), then
-- as `publish`'s (store/publish.py, `publish_args`). Returns {'fired', jobs published} or
-- {'lost', 0}.
local id, due, following, last, missed = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local lateness = ARGV[7]
local score = redis.call('ZSCORE', SCHEDULES_KEY, id)
if not score or tonumber(score) ~= tonumber(due) then return {'lost', 0} end
local jobs, published = {ARGV[8], ARGV[9], ARGV[10]}, 0
for i = 11, #ARGV, PUBLISH_JOB_ARGS do
  if redis.call('EXISTS', job_key(ARGV[i])) == 0 then
    for j = i, i + PUBLISH_JOB_ARGS - 1 do jobs[#jobs + 1] = ARGV[j] end
    published = published + 1
  end
end
if published > 0 then publish(jobs, 1, {}) end
local key = schedule_key(id)
redis.call('ZADD', SCHEDULES_KEY, following, id)
redis.call('HSET', key, 'next', following)
if last ~= '' then redis.call('HSET', key, 'last', last, 'lateness', lateness) end
redis.call('HINCRBY', key, 'fired', published)
redis.call('HINCRBY', key, 'missed', missed)
return {'fired', published}
