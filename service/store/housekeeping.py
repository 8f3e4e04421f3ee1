"""Housekeeping any worker container may run: recover jobs of dead workers, promote due
scheduled jobs, prune dead registrations. Each step is one atomic script per queue, so
several containers running it at once never move a job twice."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import redis

from service.config import constants
from service.config.settings import DEFAULT_RETENTION, Retention
from service.jobs import records
from service.store import lua, scripts

LOST_REASON = "WorkerLost: the worker running this job died (killed, out of memory, or lost)"


def recover(
    client: redis.Redis,
    queues: Sequence[str],
    *,
    max_crashes: int,
    retention: Retention = DEFAULT_RETENTION,
    owner: str = "",
    mode: Literal["lost", "interrupted"] = "lost",
    running: Sequence[str] = (),
) -> tuple[list[int], list[tuple[str, str]]]:
    """Recover the started jobs of `owner`, or (owner '') those whose heartbeat expired, on
    every queue at once (a claimed batch may span a queue's priorities).

    lost: the jobs `running` (for a whole container, owner '': every job it held) are
    re-delivered until each has crashed `max_crashes` times, then failed; the owner's other
    jobs never started and go back to the head of the queue. interrupted: all back at the
    head, not counted as attempts. Returns [failed, redelivered, interrupted] and, per job
    blamed for a crash, its type and fate ('failed' or 'retried'). `retention`: the
    ceilings the RECOVER script applies to the jobs it ends (see scripts._TRANSITIONS).
    """
    now = time.time()
    script = lua.Script(client, scripts.RECOVER)
    args: list[str | bytes | float] = [
        records.utc_iso(now),
        now,
        owner,
        mode,
        max_crashes,
        records.encode_exc_string(LOST_REASON),
        ",".join(running),
        *retention.args(),
        *queues,
    ]
    *counts, lost = script(args=args)
    fates = [
        (records.as_text(lost[i]), records.as_text(lost[i + 1])) for i in range(0, len(lost), 2)
    ]
    return [int(n) for n in counts], fates


def promote(client: redis.Redis, queues: Sequence[str]) -> tuple[int, float | None]:
    """Move due scheduled jobs onto their queues; return (moved, when the next one is due)."""
    now = time.time()
    script = lua.Script(client, scripts.PROMOTE)
    moved, next_due = script(args=[now, records.utc_iso(now), *queues])
    return int(moved), float(next_due) if next_due else None


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
