"""Jobs whose worker is gone, put back on their queue (or failed, past their retries)."""

from __future__ import annotations

import time
from typing import Literal

import redis

from service import constants, jobs, scripts

LOST_REASON = "WorkerLost: the worker running this job died (killed, out of memory, or lost)"


def recover(
    client: redis.Redis,
    queue: str,
    *,
    owner: str = "",
    mode: Literal["lost", "interrupted"] = "lost",
    current: str = "",
) -> list[int]:
    """Recover the started jobs of `owner`, or (owner '') those whose heartbeat expired.

    lost: the job `current` (or, if unknown, every job) is re-delivered until MAX_CRASHES, then
    failed; the owner's other jobs never started and go back to the head of the queue.
    interrupted: all back at the head of the queue, not counted as attempts.
    Returns [failed, redelivered, interrupted].
    """
    now = time.time()
    script = client.register_script(scripts.RECOVER)
    counts: list[int] = script(
        keys=[constants.registry_key("started", queue)],
        args=[
            jobs.utc_iso(now),
            int(now),
            constants.RESULT_TTL,
            constants.FAILURE_TTL,
            owner,
            mode,
            constants.MAX_CRASHES,
            jobs.encode_exc_string(LOST_REASON),
            current,
        ],
    )
    return counts


def prune_workers(client: redis.Redis, queue: str) -> int:
    """Drop registrations of workers whose key expired (they died without deregistering)."""
    members = client.smembers(constants.queue_workers_key(queue))
    with client.pipeline(transaction=False) as pipe:
        for key in members:
            pipe.exists(key)
        alive = pipe.execute()
    dead = [key for key, exists in zip(members, alive, strict=True) if not exists]
    if dead:
        client.srem(constants.queue_workers_key(queue), *dead)
        client.srem(constants.WORKERS_KEY, *dead)
    return len(dead)
