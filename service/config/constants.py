"""Every tunable default, exit code and Redis key name, in one place."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Final

# --- Exit codes (documented in the README) -------------------------------------------------
EXIT_OK: Final = 0
EXIT_FORCED: Final = 1  # a second signal forced the stop; work may have been interrupted
EXIT_USAGE: Final = 64  # EX_USAGE: an unknown command or option
EXIT_UNAVAILABLE: Final = 69  # EX_UNAVAILABLE: `status` could not reach Redis
EXIT_STARTUP: Final = 70  # EX_SOFTWARE: could not start (port in use, handler import failed)
EXIT_CONFIG: Final = 78  # EX_CONFIG: a setting is invalid; nothing was started
# A worker process's own exit, seen only by its supervisor: a job would not stop when told to,
# so the process finished its other jobs and left, to be replaced (EX_TEMPFAIL).
EXIT_RETIRED: Final = 75

# --- Ports and HTTP --------------------------------------------------------------------------
API_PORT: Final = 3001
WORKER_HEALTH_PORT: Final = 3003
# MAX_CONNECTIONS: most client connections open at once (the API's; the worker's health server)
API_MAX_CONNECTIONS: Final = 1000  # as gunicorn's worker_connections
WORKER_MAX_CONNECTIONS: Final = 32  # probes and scrapes only
LISTEN_BACKLOG: Final = 511  # connections the kernel queues for accept (nginx's default)
# Files a process opens besides its client connections (and, for the API, one Redis connection
# per request in flight): a few dozen of its own (pipes to worker processes, Redis, MongoDB),
# plus MongoDB's pool (up to 100), plus margin.
FILES_RESERVE: Final = 256
MIN_API_KEY_CHARS: Final = 32  # production: 32 characters, secrets.token_urlsafe(32) has 43
MAX_BATCH_JOBS: Final = 1000  # most jobs accepted by one POST /jobs/batch
RETRY_AFTER_SECONDS: Final = 5  # the Retry-After we send with a 503
KEEP_ALIVE_SECONDS: Final = 5  # an idle keep-alive connection is closed after this (uvicorn's)
LINGER_SECONDS: Final = 2.0  # after an answer to an unread body: its rest is dropped this long
MAX_HEAD_BYTES: Final = 16 * 1024  # request line + headers (uvicorn's own limit with h11); 431
# Deepest nesting of a request body (400 beyond): under the limits of the libraries that read
# and write it (pydantic's JSON parser stops at 201 levels, orjson's writer at 254).
MAX_JSON_DEPTH: Final = 200
# A 4xx lists at most this many errors (`details.error_count` counts them all), each field name
# and message clipped to ERROR_TEXT_MAX_CHARS: a reply stays small however bad the request.
LISTED_ERRORS: Final = 50
ERROR_TEXT_MAX_CHARS: Final = 300

# --- Redis client ------------------------------------------------------------------------------
REDIS_SOCKET_TIMEOUT: Final = 2.0  # seconds; a stalled Redis fails a request fast, not a hang
REDIS_CONNECT_TIMEOUT: Final = 2.0
WORKER_SOCKET_TIMEOUT: Final = REDIS_SOCKET_TIMEOUT + 1  # the worker's: above its longest BLPOP
# GET /jobs/{id}?wait=: the longest wait a request may ask for (seconds; 422 beyond), and the
# longest one XREAD of the API's long-poll connection blocks (service/store/waits.py).
MAX_WAIT_SECONDS: Final = 30
WAIT_BLOCK_SECONDS: Final = 1.0

# --- Jobs ----------------------------------------------------------------------------------------
DEFAULT_JOB_TIMEOUT: Final = 180  # seconds, as in RQ
RESULT_TTL: Final = 24 * 3600  # seconds a finished job and its result stay readable
FAILURE_TTL: Final = 7 * 24 * 3600  # seconds a failed job stays in the failed registry
# Operators' ceilings on what a job may ask for (MAX_RESULT_TTL, MAX_FAILURE_TTL): requests above
# them are refused, job types above them stop the service at start, and the scripts that set
# an expiry clamp any job (one another tool wrote too) into 1..ceiling.
MAX_RESULT_TTL: Final = 7 * 24 * 3600
MAX_FAILURE_TTL: Final = 30 * 24 * 3600
LONGEST_TTL: Final = 365 * 24 * 3600  # the highest either ceiling may be set to
MAX_SCHEDULE_SECONDS: Final = 365 * 24 * 3600  # the farthest ahead `delay` or `run_at` may be
RESULTS_KEPT: Final = 30  # attempts kept in a job's results stream (RQ keeps 10)
MIN_PROMOTE_WAIT: Final = 0.05  # seconds: housekeeping never spins faster than this
PROMOTE_BATCH: Final = 1000  # most due scheduled jobs moved per queue per promotion
JOB_ERROR_MAX_CHARS: Final = 4000  # traceback text kept on a failed job
# Largest result (its JSON) a job may return, MAX_RESULT_BYTES's default: Temporal refuses
# payloads over 2 MB, SQS messages over 256 KiB.
MAX_RESULT_BYTES: Final = 1024 * 1024

# --- Dead-letter queue (GET/POST/DELETE /dead) ----------------------------------------------
LIST_DEFAULT_LIMIT: Final = 50  # jobs per page of GET /dead and GET /jobs
LIST_MAX_LIMIT: Final = 500
DEAD_DRY_RUN_IDS: Final = 1000  # most ids a dry run lists (it counts them all)
DEAD_REGISTRY_PAGE: Final = 200  # failed-registry entries read per queue in one round trip
DEAD_FIELDS_PAGE: Final = 200  # most jobs read in one pipeline, or sent to one script
DEAD_LIST_BUDGET: Final = 10_000  # most entries one request examines before handing a cursor
DEAD_MAX_JOBS: Final = 10_000  # most dead jobs kept per RQ queue (DEAD_MAX_JOBS), as Sidekiq's
DEAD_TRIM_MAX: Final = 100  # most registry entries one dead-lettering removes (cap or expiry)

# --- Job history (MongoDB) ------------------------------------------------------------------
HISTORY_BUFFER_MAX: Final = 100_000  # most events kept waiting for MongoDB (the scripts trim)
HISTORY_PAYLOAD_MAX: Final = 16 * 1024  # bytes of payload kept in a history record
HISTORY_RESULT_MAX: Final = 16 * 1024  # bytes of result kept in a history record
HISTORY_DRAIN_SECONDS: Final = 3.0  # on shutdown, how long the shipper may keep shipping
HISTORY_BACKOFF_MAX: Final = 60.0  # seconds: the longest wait after an unexpected shipper error

# --- Tracing (OpenTelemetry, optional) ---------------------------------------------------------
TRACING_FLUSH_SECONDS: Final = 3.0  # on exit, how long a process may take to export its spans

# --- Worker -------------------------------------------------------------------------------
HEARTBEAT_MISSES: Final = 3  # a worker silent for this many intervals counts as dead
BATCH_TARGET_SECONDS: Final = 0.02  # size claims so one batch takes about this long
# A job claimed ahead (prefetched) that has not started after this goes back to its queue,
# for a process with a free slot: the jobs in front of it turned out long.
PREFETCH_WAIT_SECONDS: Final = 0.1
RESTART_BACKOFF_MAX: Final = 10.0  # seconds between restarts of a child that keeps dying
FORCE_KILL_GRACE: Final = 5.0  # after a forced stop, seconds before SIGKILL

WAKE_TOKENS_MAX: Final = 100  # wake-up tokens kept per queue (hints for idle workers)

# --- Schedules (service/jobs/schedule.py) ------------------------------------------------------
SCHEDULE_TICK_SECONDS: Final = 1.0  # how often each worker container looks for due schedules
SCHEDULE_BATCH: Final = 100  # most due schedules one tick fires
# How often each container declares its schedules again, and removes those of its job types
# the code no longer declares: while two versions run (a rolling deploy) the schedules follow
# whichever declared last, and settle on the new code within this long of the old one's end.
SCHEDULE_DECLARE_SECONDS: Final = 60.0
# A fire this many seconds late or less is on time (Quartz's misfire threshold): published
# however many are due. Later, the schedule misfired and its misfire policy decides.
SCHEDULE_MISFIRE_SECONDS: Final = 60
SCHEDULE_CATCH_UP_MAX: Final = 1000  # the highest catch_up_max a schedule may set
SCHEDULE_GRACE_MAX: Final = 24 * 3600  # the longest grace (seconds) a schedule may set
SCHEDULE_EVERY_MAX: Final = 366 * 24 * 3600  # the longest interval (seconds) a schedule may set
SCHEDULE_COUNT_MAX: Final = 10_000  # missed fires are counted up to this many

# --- Dependencies (depends_on) -------------------------------------------------------------
MAX_DEPENDENCIES: Final = 1000  # most parents one job may wait for (a batch's worth)
PUBLISH_JOB_ARGS: Final = 11  # values per job in the publishing scripts' arguments
# --- Limits per job type (service/jobs/limit.py) -----------------------------------------------
# A job held for a concurrency slot is back on its queue when a slot frees; failing that (a
# lease that expired instead of ending), this long after it was held, to be looked at again.
LIMIT_RECHECK_SECONDS: Final = 5
# Leases older than their expiry by this much are dropped when read: a safety net only (every
# ending frees its lease), wide enough for clock skew between a worker and Redis.
LIMIT_LEASE_GRACE: Final = 30
LIMIT_HELD_RELEASE_MAX: Final = 10  # stale held entries one freed slot skips at most
LIMIT_KEY_TTL: Final = 24 * 3600  # seconds a lease or held set outlives its last write

# --- Redis keys: RQ's data model, so `rq info` and RQ's classes read our jobs -------------------
# Every key is KEY_PREFIX, then one of the parts below. The Lua scripts get KEY_PREFIX as their
# ARGV[1] and build keys with functions and names of the same names as here, generated from
# these two tables (service/store/scripts.py): no key is spelled in the Lua itself.
KEY_PREFIX: Final = "rq:"
# One key each: its name here (and in the Lua) -> its part after KEY_PREFIX.
KEYS: Final = MappingProxyType(
    {
        "QUEUES_KEY": "queues",  # set of queue keys (RQ's)
        "WORKERS_KEY": "workers",  # set of worker keys (RQ's)
        # Job history (MongoDB): state-change events waiting to be shipped, appended by the
        # scripts while HISTORY_ON_KEY exists (APIs and shippers keep it alive).
        "HISTORY_STREAM": "history",
        "HISTORY_ON_KEY": "history:on",
        "HISTORY_LEASE_KEY": "history:lease",  # the one shipper allowed to ship
        "HISTORY_DROPPED_KEY": "history:dropped",  # events dropped, the stream being full
        "DEAD_TRIMMED_KEY": "dead:trimmed",  # dead jobs removed to keep under DEAD_MAX_JOBS
        # Paused queues (ours, not RQ's): a set of RQ queue names, a named queue's three
        # priorities together. CLAIM takes no job from them; publishing goes on.
        "PAUSED_KEY": "paused",
        "SCHEDULES_KEY": "schedules",  # sorted set: schedule ids, scored by next fire time
        # Job types with a limit (rate or concurrency) from code or the API: a set of names.
        "LIMITED_KEY": "rl:types",
    }
)
# A key per queue, job or worker: its function here (and in the Lua) -> its part before the name.
KEY_FAMILIES: Final = MappingProxyType(
    {
        "queue_key": "queue:",  # + queue: the ids of its waiting jobs, a list (RQ's)
        "wake_key": "wake:",  # + queue: wake-up tokens, one per push (ours, not RQ's)
        "job_key": "job:",  # + job id: the job's hash (RQ's)
        "result_key": "results:",  # + job id: one stream entry per attempt (RQ's)
        "started_key": "wip:",  # + queue: `<id>:<execution id>` of claimed jobs (RQ's)
        "finished_key": "finished:",  # + queue: RQ's registries, scored by expiry
        "failed_key": "failed:",  # the dead-letter queue
        "scheduled_key": "scheduled:",  # scored by when each job is due
        "canceled_key": "canceled:",
        "deferred_key": "deferred:",
        "worker_key": "worker:",  # + worker name: its registration (RQ's)
        "queue_workers_key": "workers:",  # + queue: the keys of the workers serving it
        "command_channel": "pubsub:",  # + worker name: RQ's commands (`stop-job` cancels)
        "idempotency_key": "idempotency:",  # + Idempotency-Key: the job it made (ours)
        "schedule_key": "schedule:",  # + schedule id: its definition and fire times (ours)
        # A part with `{}` has the name inside it. RQ's own keys of a job's dependencies: the
        # ids of the jobs that wait for it (a set), and the ids of the parents a deferred job
        # still waits for (RQ's spelling, with its double colon; RQ keeps every parent in it,
        # we remove each as it finishes).
        "dependents_key": "job:{}:dependents",
        "dependencies_key": "job::{}:dependencies",
        # Limits (ours; RQ 3's own limiter keys live under `rl:<key>`, these under `rl:<kind>:`
        # so neither reads the other's). + job type: a hash, `code` (written by every worker
        # container at start) and `override` (PUT /limits), each "rate/period/concurrency/key".
        "limit_config_key": "rl:type:",
        # + `<type>:<key value>`: start instants (and reserved future starts) of the rate
        # window; the leases of running attempts, scored by expiry; jobs held for a slot.
        "limit_starts_key": "rl:starts:",
        "limit_reserved_key": "rl:reserved:",  # jobs parked by the rate, scored by when due
        "limit_leases_key": "rl:leases:",
        "limit_held_key": "rl:held:",
    }
)

QUEUES_KEY: Final = KEY_PREFIX + KEYS["QUEUES_KEY"]
WORKERS_KEY: Final = KEY_PREFIX + KEYS["WORKERS_KEY"]
HISTORY_STREAM: Final = KEY_PREFIX + KEYS["HISTORY_STREAM"]
HISTORY_ON_KEY: Final = KEY_PREFIX + KEYS["HISTORY_ON_KEY"]
HISTORY_LEASE_KEY: Final = KEY_PREFIX + KEYS["HISTORY_LEASE_KEY"]
HISTORY_DROPPED_KEY: Final = KEY_PREFIX + KEYS["HISTORY_DROPPED_KEY"]
DEAD_TRIMMED_KEY: Final = KEY_PREFIX + KEYS["DEAD_TRIMMED_KEY"]
PAUSED_KEY: Final = KEY_PREFIX + KEYS["PAUSED_KEY"]
SCHEDULES_KEY: Final = KEY_PREFIX + KEYS["SCHEDULES_KEY"]
LIMITED_KEY: Final = KEY_PREFIX + KEYS["LIMITED_KEY"]


def _family(name: str) -> Callable[[str], str]:
    """The function that builds a key of family `name` (KEY_FAMILIES) from its name part."""
    head, _, tail = (KEY_PREFIX + KEY_FAMILIES[name]).partition("{}")

    def key(last: str) -> str:
        return head + last + tail

    key.__name__ = key.__qualname__ = name
    return key


queue_key: Final = _family("queue_key")
wake_key: Final = _family("wake_key")
job_key: Final = _family("job_key")
result_key: Final = _family("result_key")
worker_key: Final = _family("worker_key")
queue_workers_key: Final = _family("queue_workers_key")
command_channel: Final = _family("command_channel")
idempotency_key: Final = _family("idempotency_key")
schedule_key: Final = _family("schedule_key")
dependents_key: Final = _family("dependents_key")
dependencies_key: Final = _family("dependencies_key")
limit_config_key: Final = _family("limit_config_key")
_REGISTRIES = {
    kind: KEY_PREFIX + KEY_FAMILIES[f"{kind}_key"]
    for kind in ("started", "finished", "failed", "scheduled", "canceled", "deferred")
}


def limit_key(family: str, job_type: str, value: str = "") -> str:
    """The key of family limit_starts_key, limit_leases_key or limit_held_key for one job type
    and value of its limit's key field ('' when it has none)."""
    return f"{KEY_PREFIX}{KEY_FAMILIES[family]}{job_type}:{value}"


def queue_of_key(key: bytes | str) -> str:
    """The queue a queue key (a member of QUEUES_KEY) names: `rq:queue:emails` -> `emails`."""
    text = key.decode() if isinstance(key, bytes) else key
    return text.removeprefix(KEY_PREFIX + KEY_FAMILIES["queue_key"])


def registry_key(kind: str, queue: str) -> str:
    """kind: started, finished, failed, scheduled, canceled or deferred."""
    return _REGISTRIES[kind] + queue
