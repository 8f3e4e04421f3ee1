#!lua flags=allow-oom
-- include: _transitions _dependents
-- Jobs whose worker is gone. ARGV: the key prefix, now_iso, now, owner ('' = every entry whose
-- heartbeat expired), mode (lost|interrupted), max crashes, exc (b64 zlib text for a lost
-- worker), running (the ids of the jobs the dead process was running, comma-separated), the
-- retention limits, then the queues. lost: each running job is re-delivered (not counted
-- against its retries) until it has crashed its worker MAX_CRASHES times, then failed (see
-- `crashed`); the owner's other claimed jobs never started and go back to the head of the
-- queue untouched. When a whole container died (owner ''), nobody knows which of its jobs were
-- running: each one it held is blamed (a process holds little more than it runs: jobs claimed
-- ahead go back when they wait). A blamed job runs alone afterwards (the worker isolates a job
-- with crashes), so an innocent neighbour of a poison job finishes there and only the guilty
-- one keeps crashing. interrupted: all go back to the head, not counted.
-- Returns {failed, redelivered, interrupted, {type, 'failed' | 'retried', ...} per blamed job}.
-- Runs on a full Redis: it only moves jobs of dead workers back, and a refused recovery would
-- leave them started, run by no one.
local now_iso, now_text, owner, mode = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, max_crashes, exc = tonumber(now_text), tonumber(ARGV[6]), ARGV[7]
local running = {}
for id in string.gmatch(ARGV[8], '[^,]+') do running[id] = true end
set_limits(ARGV, 9)
local counts = {failed = 0, redelivered = 0, interrupted = 0}
local lost = {}  -- per job blamed for the crash: its type, then 'failed' or 'retried'
for qi = 12, #ARGV do
  local q = ARGV[qi]
  local wip = started_key(q)
  local members
  if owner == '' then
    members = redis.call('ZRANGEBYSCORE', wip, '-inf', now)
  else
    members = redis.call('ZRANGE', wip, 0, -1)
  end
  for _, member in ipairs(members) do
    local id = string.match(member, '^[^:]+')
    local jk = job_key(id)
    local f = redis.call('HMGET', jk, 'worker_name', 'status')
    local who = f[1] or ''
    if owner ~= '' and who ~= owner then
      -- another worker's job
    elseif f[2] ~= 'started' then
      redis.call('ZREM', wip, member)
    elseif mode == 'interrupted' or (owner ~= '' and not running[id]) then
      local n = interrupt(jk, id, q, member, who, now_text, now_text, mode == 'interrupted')
      counts.interrupted = counts.interrupted + n
    else
      local fate = crashed(jk, id, q, member, who, exc, max_crashes, now_text, now_text,
        now_iso, now)
      if fate == 'failed' then
        counts.failed = counts.failed + 1
        settle(id, now, now_iso, failure_ttl)  -- its dependents, if any
      else
        counts.redelivered = counts.redelivered + 1
      end
      lost[#lost + 1] = redis.call('HGET', jk, 'description') or ''
      lost[#lost + 1] = fate
    end
    if owner == '' or who == owner then limit_release(jk, member) end
  end
end
return {counts.failed, counts.redelivered, counts.interrupted, lost}
