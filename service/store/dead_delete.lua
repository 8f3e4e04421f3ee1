#!lua flags=allow-oom
-- include: _dead
-- ARGV: the key prefix, then job ids. Each job still dead is deleted: its hash, its results
-- stream and its failed-registry entry. Returns how many were.
-- Runs on a full Redis: deleting frees memory, the way out of a full Redis.
local deleted = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local q = dead_queue(id)
  if q then
    redis.call('ZREM', failed_key(q), id)
    redis.call('DEL', job_key(id), result_key(id))
    deleted = deleted + 1
  end
end
return deleted
