#!lua
-- include: _publish_jobs
-- ARGV: the key prefix, then as `publish`'s, from 2. Returns 1, or {queue, backlog} if
-- MAX_BACKLOG refused it.
return publish(ARGV, 2, {}) or 1
