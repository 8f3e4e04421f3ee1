-- include: _push
-- Job dependencies (depends_on), in RQ's data model. A job that waits is `deferred`, in its
-- queue's deferred registry (deferred_key(q), scored by when it began to wait, as RQ scores
-- it); its hash names its parents (`dependency_ids`, JSON, and `dependency_id`, the first;
-- `allow_dependency_failures` 1 when set: RQ's fields); dependencies_key(id) (RQ's set) holds
-- the parents it still waits for, and each parent's dependents_key (RQ's set) holds it.
-- A parent that finishes takes itself out of each dependent's set, and a dependent whose set
-- empties is queued: O(1) per dependent, so a fan-in of n parents costs O(n) in all. A parent
-- that ends otherwise for good (dead-lettered, canceled) cancels each dependent still waiting,
-- and theirs in turn, from a work list (a chain of any length costs no Lua stack), unless the
-- dependent allows failures: then that parent counts as done. A dead parent retried from the
-- dead-letter queue re-opens the dependents it canceled (`reopen`). The sets of an ended job
-- expire with its hash, so a dead parent keeps its dependents until it is retried or gone.

-- How parent `pid` bears on its dependents: 'finished', '' (not ended yet), or the reason
-- they cannot run: dependency_failed (dead-lettered), dependency_canceled (canceled by a
-- client; one canceled for its own parent passes that reason on), dependency_missing (its hash
-- is gone: deleted, or expired before it finished; nothing shows it finished, so it failed).
local function outcome_of(pid)
  local f = redis.call('HMGET', job_key(pid), 'status', 'cancel_reason')
  local status = f[1]
  if status == 'finished' then return 'finished' end
  if status == 'failed' then return 'dependency_failed' end
  if status == 'canceled' then return f[2] or 'dependency_canceled' end
  if not status then return 'dependency_missing' end
  return ''
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- A deferred job whose parents are all done: queued, or scheduled while its run_at is ahead.
-- Returns its new status (the caller records it).
local function release(jk, id, q, now, now_iso)
  redis.call('ZREM', deferred_key(q), id)
  redis.call('DEL', dependencies_key(id))
  local run_at = tonumber(redis.call('HGET', jk, 'run_at') or '')
  if run_at and run_at > now then
    redis.call('HSET', jk, 'status', 'scheduled')
    redis.call('ZADD', scheduled_key(q), run_at, id)
    return 'scheduled'
  end
  redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', now_iso)
  push(q, id, false)
  return 'queued'
end

-- A job canceled because its parent `pid` cannot finish (`reason`: see outcome_of). Its keys
-- are kept `ttl` seconds, so that retrying the parent can re-open it meanwhile.
local function drop(jk, id, q, pid, reason, ttl, now, now_iso)
  redis.call('ZREM', deferred_key(q), id)
  redis.call('HSET', jk, 'status', 'canceled', 'ended_at', now_iso, 'cancel_reason', reason,
    'cancel_dependency', pid)
  redis.call('ZADD', canceled_key(q), now, id)
  redis.call('EXPIRE', jk, ttl)
  redis.call('EXPIRE', dependencies_key(id), ttl)
  redis.call('EXPIRE', dependents_key(id), ttl)
end

-- A new job `id` (hash written) with parents: `deps` is '0' or '1' (allow failures), then the
-- parent ids, comma-separated; `run_at` '' or when it is due; `ttl` its failure_ttl. Every
-- parent exists (see unknown_parents). Returns its status: deferred, or queued or scheduled
-- (every parent finished), or canceled (a parent cannot finish).
local function depend(jk, id, q, deps, run_at, ttl, now_iso)
  local allow, ids = nil, {}
  for part in string.gmatch(deps, '[^,]+') do
    if allow == nil then allow = part == '1' else ids[#ids + 1] = part end
  end
  redis.call('HSET', jk, 'dependency_id', ids[1], 'dependency_ids', cjson.encode(ids))
  if allow then redis.call('HSET', jk, 'allow_dependency_failures', 1) end
  if run_at ~= '' then redis.call('HSET', jk, 'run_at', run_at) end
  local blocked, reason
  for _, pid in ipairs(ids) do
    local how = outcome_of(pid)
    if how ~= 'finished' then
      local dk = dependents_key(pid)
      redis.call('SADD', dk, id)
      local pttl = redis.call('PTTL', job_key(pid))  -- an ended parent's set goes with it
      if pttl > 0 then redis.call('PEXPIRE', dk, pttl) end
      if how == '' or not allow then redis.call('SADD', dependencies_key(id), pid) end
      if how ~= '' and not allow and not blocked then blocked, reason = pid, how end
    end
  end
  local now = clock()
  if blocked then
    drop(jk, id, q, blocked, reason, ttl, now, now_iso)
    return 'canceled'
  end
  if redis.call('SCARD', dependencies_key(id)) == 0 then
    return release(jk, id, q, now, now_iso)
  end
  redis.call('HSET', jk, 'status', 'deferred')
  redis.call('ZADD', deferred_key(q), now, id)
  return 'deferred'
end

-- The parents named by the jobs from argv[first] (PUBLISH_JOB_ARGS values each, the parents
-- in the last) that do not exist, jobs of the same call aside; {} when all do.
local function unknown_parents(argv, first)
  local mine, unknown, seen = {}, {}, {}
  for i = first, #argv, PUBLISH_JOB_ARGS do mine[argv[i]] = true end
  for i = first, #argv, PUBLISH_JOB_ARGS do
    local deps = argv[i + PUBLISH_JOB_ARGS - 1]
    if deps ~= '' then
      for pid in string.gmatch(string.sub(deps, 3), '[^,]+') do
        if not mine[pid] and not seen[pid] and redis.call('EXISTS', job_key(pid)) == 0 then
          unknown[#unknown + 1] = pid
        end
        seen[pid] = true
      end
    end
  end
  return unknown
end

-- After job `id` ended (finished, dead-lettered, canceled): each dependent still waiting for
-- it is decided, and so on down the graph. `ttl(jk)`: how long a canceled job is kept.
local function settle(id, now, now_iso, ttl)
  local work, n = {id}, 1
  while n > 0 do
    local pid = work[n]
    work[n], n = nil, n - 1
    local dk = dependents_key(pid)
    local children = redis.call('SMEMBERS', dk)
    if #children > 0 then
      local how = outcome_of(pid)
      for _, cid in ipairs(children) do
        local cjk = job_key(cid)
        local f = redis.call('HMGET', cjk, 'status', 'origin', 'allow_dependency_failures')
        if how == 'finished' or f[3] == '1' then
          redis.call('SREM', dependencies_key(cid), pid)
          if f[1] == 'deferred' and redis.call('SCARD', dependencies_key(cid)) == 0 then
            record(cid, release(cjk, cid, f[2], now, now_iso), 'reason', 'dependencies_met')
          end
        elseif f[1] == 'deferred' then
          drop(cjk, cid, f[2], pid, how, ttl(cjk), now, now_iso)
          record(cid, 'canceled', 'reason', how, 'dependency', pid)
          n = n + 1
          work[n] = cid
        end
      end
      local pttl = redis.call('PTTL', job_key(pid))
      if how == 'finished' then
        redis.call('DEL', dk)
      elseif pttl > 0 then
        redis.call('PEXPIRE', dk, pttl)
      end
    end
  end
end

-- A client canceled deferred job `id`: out of its registry; 1 if it was there.
local function undefer(id, q)
  redis.call('DEL', dependencies_key(id))
  return redis.call('ZREM', deferred_key(q), id)
end

-- Job `id`, dead, was retried: each dependent it canceled (and theirs in turn) waits again for
-- the parents it still waits for, unless another of them cannot finish either: it then stays
-- canceled, for that one (re-opened in turn if that one is retried).
local function reopen(id, now_iso)
  local now = clock()
  local work, n = {id}, 1
  while n > 0 do
    local pid = work[n]
    work[n], n = nil, n - 1
    redis.call('PERSIST', dependents_key(pid))
    for _, cid in ipairs(redis.call('SMEMBERS', dependents_key(pid))) do
      local cjk = job_key(cid)
      local f = redis.call('HMGET', cjk, 'status', 'origin', 'cancel_reason')
      if f[1] == 'canceled' and f[3] then  -- canceled for a parent, not by a client
        local blocked, reason
        for _, other in ipairs(redis.call('SMEMBERS', dependencies_key(cid))) do
          local how = outcome_of(other)
          if how ~= '' and how ~= 'finished' then
            blocked, reason = other, how
            break
          end
        end
        if blocked then
          redis.call('HSET', cjk, 'cancel_reason', reason, 'cancel_dependency', blocked)
        else
          redis.call('ZREM', canceled_key(f[2]), cid)
          redis.call('HDEL', cjk, 'cancel_reason', 'cancel_dependency', 'ended_at')
          redis.call('PERSIST', cjk)
          redis.call('PERSIST', dependencies_key(cid))
          local status = 'deferred'
          if redis.call('SCARD', dependencies_key(cid)) == 0 then
            status = release(cjk, cid, f[2], now, now_iso)
          else
            redis.call('HSET', cjk, 'status', 'deferred')
            redis.call('ZADD', deferred_key(f[2]), now, cid)
          end
          record(cid, status, 'reason', 'dependency_retried', 'dependency', pid)
          n = n + 1
          work[n] = cid
        end
      end
    end
  end
end
