#!lua
-- include: _publish_jobs
-- Single jobs of concurrent requests, sent together (publisher.Coalescer). ARGV: the key
-- prefix, then as `publish`'s; each job is admitted or refused alone (MAX_BACKLOG), in order,
-- as if published one by one. Returns, per job, 1 or {queue, backlog}.
local outcomes, seen = {}, {}
for i = 5, #ARGV, PUBLISH_JOB_ARGS do
  local one = {ARGV[2], ARGV[3], ARGV[4], unpack(ARGV, i, i + PUBLISH_JOB_ARGS - 1)}
  outcomes[#outcomes + 1] = publish(one, 1, seen) or 1
end
return outcomes
