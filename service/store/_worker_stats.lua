-- What a worker process runs, on its hash as RQ's workers keep it for RQ's tools (rq-dashboard,
-- `rq info`): `state` (busy while it holds a claimed job, else idle), `current_job` (the job
-- it claimed last, while it holds it: with WORKER_CONCURRENCY > 1, when that one ends while
-- others run, none is named until the next claim or heartbeat names the last one claimed of
-- those still held), and RQ's counters `successful_job_count`, `failed_job_count` (every failed
-- attempt, retried or not, as RQ counts them) and `total_working_time` (seconds). Our `held`
-- counts the jobs it holds (each heartbeat rewrites it from the process's own count). All of it
-- once per script call, not per job. Nothing is written for a worker not registered (no hash).
-- RQ 3's execution index (what RQ 3 reads a current job from) is not written: rq-dashboard 0.9
-- decodes that job with pickle whatever its --json says, and its workers page would fail.

-- Once per CLAIM: `claimed` is its reply.
local function worker_claimed(worker, claimed)
  local wk = worker_key(worker)
  if #claimed == 0 or redis.call('EXISTS', wk) == 0 then return end
  redis.call('HINCRBY', wk, 'held', #claimed)
  redis.call('HSET', wk, 'state', 'busy', 'current_job', claimed[#claimed][1])
end

local ended = {count = 0, not_held = 0, ok = 0, failed = 0, seconds = 0, ids = {}}
-- Per attempt COMPLETE was given whose claim the worker no longer held.
local function attempt_not_held()
  ended.not_held = ended.not_held + 1
end

-- Per attempt COMPLETE was given (`fate`: its reply for it).
local function attempt_ended(id, fate, t0, t1)
  ended.count = ended.count + 1
  ended.ids[id] = true
  if fate == 'finished' then
    ended.ok = ended.ok + 1
  elseif fate == 'failed' or fate == 'retried' then
    ended.failed = ended.failed + 1
  else
    return
  end
  ended.seconds = ended.seconds + math.max((tonumber(t1) or 0) - (tonumber(t0) or 0), 0)
end

-- Once per COMPLETE, after attempt_ended for each attempt.
local function worker_ended(worker)
  local wk = worker_key(worker)
  if ended.count == 0 or redis.call('EXISTS', wk) == 0 then return end
  if ended.ok > 0 then redis.call('HINCRBY', wk, 'successful_job_count', ended.ok) end
  if ended.failed > 0 then redis.call('HINCRBY', wk, 'failed_job_count', ended.failed) end
  if ended.seconds > 0 then
    redis.call('HINCRBYFLOAT', wk, 'total_working_time', string.format('%.6f', ended.seconds))
  end
  local held = redis.call('HINCRBY', wk, 'held', ended.not_held - ended.count)
  local current = redis.call('HGET', wk, 'current_job')
  if current and ended.ids[current] then redis.call('HDEL', wk, 'current_job') end
  if held <= 0 then redis.call('HSET', wk, 'state', 'idle', 'held', 0) end
end

-- Per heartbeat: `last` the id of the job the process claimed last of those it holds (nil if
-- none), named if no other is.
local function worker_beat(worker, last)
  local wk = worker_key(worker)
  if not last then
    redis.call('HDEL', wk, 'current_job')
  elseif redis.call('HEXISTS', wk, 'current_job') == 0 then
    redis.call('HSET', wk, 'current_job', last)
  end
end
