-- include: _push _backlog _dependents
-- Writes each job's hash as RQ's enqueue does, then pushes it, or (run_at) adds it to the
-- scheduled registry as RQ's enqueue_at does. argv[first]: now_iso, argv[first + 1]: the W3C
-- traceparent of the enqueue span, stored on every job ('' = tracing off: no field),
-- argv[first + 2]: MAX_BACKLOG (0 = off), then per job PUBLISH_JOB_ARGS values
-- (store/publish.py, `publish_args`): id, queue, type, data, timeout, retries_left, backoff,
-- result_ttl, failure_ttl, run_at ('' = now), parents ('' = none: see `depend`). Returns nil,
-- or {queue, its backlog} when the backlog refused the request, or {'', id...} when parents
-- do not exist (nothing written either way). `seen`: the queues this script has already added
-- to QUEUES_KEY (one SADD per queue, not per job). A full Redis (maxmemory, noeviction) refuses the first HSET, and
-- with it the whole script: Redis refuses a memory-growing command in a script only while the
-- script has written nothing.
local function publish(argv, first, seen)
  local now_iso, traceparent = argv[first], argv[first + 1]
  local unknown = unknown_parents(argv, first + 3)
  if #unknown > 0 then return {'', unpack(unknown)} end
  local full = over_limit(argv, first + 3, tonumber(argv[first + 2]))
  if full then return full end
  for i = first + 3, #argv, PUBLISH_JOB_ARGS do
    local id, q, run_at = argv[i], argv[i + 1], argv[i + 9]
    local jk = job_key(id)
    redis.call('HSET', jk, 'created_at', now_iso, 'data', argv[i + 3], 'origin', q,
      'description', argv[i + 2], 'timeout', argv[i + 4], 'retries_left', argv[i + 5],
      'max_retries', argv[i + 5], 'backoff', argv[i + 6], 'result_ttl', argv[i + 7],
      'failure_ttl', argv[i + 8], 'attempts', 0)
    if traceparent ~= '' then redis.call('HSET', jk, 'traceparent', traceparent) end
    local status = run_at == '' and 'queued' or 'scheduled'
    if argv[i + 10] ~= '' then
      status = depend(jk, id, q, argv[i + 10], run_at, argv[i + 8], now_iso)
    elseif run_at == '' then
      redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', now_iso)
      push(q, id, false)
    else
      redis.call('HSET', jk, 'status', 'scheduled', 'run_at', run_at)
      redis.call('ZADD', scheduled_key(q), run_at, id)
    end
    record(id, status, 'type', argv[i + 2], 'queue', q, 'data', argv[i + 3], 'run_at', run_at)
    if not seen[q] then
      redis.call('SADD', QUEUES_KEY, queue_key(q))
      seen[q] = true
    end
  end
  return nil
end
