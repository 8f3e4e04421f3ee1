"""Housekeeping any worker container may run: recover jobs of dead workers, promote due
scheduled jobs, prune dead registrations. Each step is one atomic script per queue, so
several containers running it at once never move a job twice."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import redis

from service.config import constants
from service.config.settings import DEFAULT_RETENTION, Retention
from service.jobs import records
from service.jobs.states import Fate
from service.store import lua, scripts

LOST_REASON = "WorkerLost: the worker running this job died (killed, out of memory, or lost)"


@dataclass(frozen=True, slots=True)
class Blamed:
    """A job blamed for a crash: its type, and whether it was re-delivered or failed."""

    type: str
    fate: Literal[Fate.RETRIED, Fate.FAILED]


@dataclass(frozen=True, slots=True)
class Recovered:
    """What RECOVER did: jobs failed (crashed too often), re-delivered (blamed for a crash),
    and put back untouched (never started, or interrupted); the blamed ones by type."""

    failed: int
    redelivered: int
    interrupted: int
    blamed: tuple[Blamed, ...] = ()


@dataclass(frozen=True, slots=True)
class Promoted:
    """What PROMOTE did: jobs moved onto their queues, and when the next one is due (epoch
    seconds; None when no job is scheduled)."""

    moved: int
    next_due: float | None


_BLAMED: dict[bytes, Literal[Fate.RETRIED, Fate.FAILED]] = {
    b"retried": Fate.RETRIED,
    b"failed": Fate.FAILED,
}


def recover(
    client: redis.Redis,
    queues: Sequence[str],
    *,
    max_crashes: int,
    retention: Retention = DEFAULT_RETENTION,
    owner: str = "",
    mode: Literal["lost", "interrupted"] = "lost",
    running: Sequence[str] = (),
) -> Recovered:
    """Recover the started jobs of `owner`, or (owner '') those whose heartbeat expired, on
    every queue at once (a claimed batch may span a queue's priorities).

    lost: the jobs `running` (for a whole container, owner '': every job it held) are
    re-delivered until each has crashed `max_crashes` times, then failed; the owner's other
    jobs never started and go back to the head of the queue. interrupted: all back at the
    head, not counted as attempts. `retention`: the ceilings the RECOVER script applies to
    the jobs it ends (see _transitions.lua).
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
    failed, redelivered, interrupted, lost = script(args)
    blamed = tuple(
        Blamed(records.as_text(lost[i]), _BLAMED[lost[i + 1]]) for i in range(0, len(lost), 2)
    )
    return Recovered(int(failed), int(redelivered), int(interrupted), blamed)


def promote(client: redis.Redis, queues: Sequence[str]) -> Promoted:
    """Move due scheduled jobs onto their queues."""
    now = time.time()
    script = lua.Script(client, scripts.PROMOTE)
    moved, next_due = script([now, records.utc_iso(now), *queues])
    return Promoted(int(moved), float(next_due) if next_due else None)


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
