#!lua flags=allow-oom
-- include: _worker_stats _limits
-- A worker process's heartbeat: its registration (as RQ's), and the started-registry entries
-- of the jobs it holds pushed ahead of the clock (XX: never re-adds a recovered entry).
-- ARGV: the key prefix, worker name, ttl, registry score, then the registration's fields as
-- name/value pairs up to '--', then the queues it serves up to '--', then queue/member pairs
-- of held jobs. Runs on a full Redis: a refused heartbeat would make running jobs look
-- abandoned, and run them twice; it only replaces values in place. (On Redis 6.2, which ignores
-- flags, EXPIRE coming first does the same: a write that cannot grow memory, after which Redis
-- lets the script's memory-growing commands run even when it is full.)
local key, ttl, score = worker_key(ARGV[2]), ARGV[3], ARGV[4]
redis.call('EXPIRE', key, ttl)
local i, fields = 5, {}
while ARGV[i] ~= '--' do fields[#fields + 1] = ARGV[i]; i = i + 1 end
redis.call('HSET', key, unpack(fields))
redis.call('EXPIRE', key, ttl)
redis.call('SADD', WORKERS_KEY, key)
i = i + 1
while ARGV[i] ~= '--' do
  redis.call('SADD', queue_workers_key(ARGV[i]), key)
  redis.call('SADD', QUEUES_KEY, queue_key(ARGV[i]))  -- RQ's tools list it before its first job
  i = i + 1
end
local last
for j = i + 1, #ARGV, 2 do
  redis.call('ZADD', started_key(ARGV[j]), 'XX', score, ARGV[j + 1])
  last = ARGV[j + 1]
  limit_renew(ARGV[j + 1], score)
end
worker_beat(ARGV[2], last and string.match(last, '^(.*):[^:]*$'))
return 1
