-- Job history: while an API or a history shipper with MONGODB_URI runs, it keeps HISTORY_ON_KEY
-- alive and every state change is appended to the HISTORY_STREAM stream, in the same atomic
-- script as the change itself; the shipper moves them to MongoDB in bulk
-- (service/history/shipper.py). Events may wait long (no worker running, MongoDB down): at
-- HISTORY_BUFFER_MAX events the oldest are trimmed and counted in HISTORY_DROPPED_KEY. XLEN
-- is O(1), and read once per script call.
local history_on = redis.call('EXISTS', HISTORY_ON_KEY) == 1
local history_len = history_on and redis.call('XLEN', HISTORY_STREAM) or 0
local function record(id, status, ...)
  if history_on then
    if history_len >= HISTORY_BUFFER_MAX then
      redis.call('XTRIM', HISTORY_STREAM, 'MAXLEN', HISTORY_BUFFER_MAX - 1)
      redis.call('INCRBY', HISTORY_DROPPED_KEY, history_len - HISTORY_BUFFER_MAX + 1)
      history_len = HISTORY_BUFFER_MAX - 1
    end
    redis.call('XADD', HISTORY_STREAM, '*', 'id', id, 'status', status, ...)
    history_len = history_len + 1
  end
end
