-- A job is dead while it is in its queue's failed registry with status `failed`.
local function dead_queue(id)
  local f = redis.call('HMGET', job_key(id), 'status', 'origin')
  if f[1] ~= 'failed' or not f[2] then return nil end
  if not redis.call('ZSCORE', failed_key(f[2]), id) then return nil end
  return f[2]
end
