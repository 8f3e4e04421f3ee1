#!lua
-- include: _publish_jobs
-- One job under an idempotency key. ARGV: the key prefix, the idempotency key, the
-- fingerprint of the request, the key's TTL, then as `publish`'s. Returns {id, 'new' | 'same' |
-- 'different'}: an existing key returns its job's id, and whether this request is the same as
-- the one that made it; or {queue, 'full', backlog} when MAX_BACKLOG refused a new job (a
-- repeat is still answered), or {'', 'full', id...} when parents do not exist.
local key, fingerprint = idempotency_key(ARGV[2]), ARGV[3]
local existing = redis.call('HMGET', key, 'id', 'fingerprint')
if existing[1] then
  -- A write that changes nothing but replicates: a WAIT after this call (DURABILITY=
  -- replicated) then covers the first request's writes too, whatever connection it comes on.
  redis.call('HSET', key, 'id', existing[1])
  return {existing[1], existing[2] == fingerprint and 'same' or 'different'}
end
local full = publish(ARGV, 5, {})
if full then return {full[1], 'full', unpack(full, 2)} end
redis.call('HSET', key, 'id', ARGV[8], 'fingerprint', fingerprint)
redis.call('EXPIRE', key, ARGV[4])
return {ARGV[8], 'new'}
