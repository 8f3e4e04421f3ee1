-- Backpressure (MAX_BACKLOG): a request is refused whole, before anything is written, when it
-- would take a queue's backlog (its waiting jobs, over its three priority lists) past `limit`.
-- Jobs scheduled for later do not add to it, but a queue already at its limit takes none.
-- Checked inside the publishing script, so parallel publishers cannot overshoot.
local function base_of(q)
  return string.match(q, '^(.*)%.high$') or string.match(q, '^(.*)%.low$') or q
end

local function over_limit(argv, first, limit)
  if limit <= 0 then return nil end
  local order, adding = {}, {}
  for i = first, #argv, PUBLISH_JOB_ARGS do
    local base = base_of(argv[i + 1])
    if not adding[base] then order[#order + 1] = base; adding[base] = 0 end
    if argv[i + 9] == '' then adding[base] = adding[base] + 1 end
  end
  for _, base in ipairs(order) do
    local waiting = redis.call('LLEN', queue_key(base .. '.high'))
      + redis.call('LLEN', queue_key(base)) + redis.call('LLEN', queue_key(base .. '.low'))
    if waiting + math.max(adding[base], 1) > limit then return {base, waiting} end
  end
  return nil
end
