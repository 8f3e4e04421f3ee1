"""PUBLISH, PUBLISH_EACH and PUBLISH_ONCE (publish*.lua): new jobs written as RQ's enqueue
writes them, then queued or scheduled, unless MAX_BACKLOG refuses them (nothing written). On
the API's hot path: run on `Direct`'s connections."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import orjson
import redis

from service.jobs import records
from service.jobs.records import NewJob
from service.store import lua, scripts
from service.store.connection import Direct, Script

Arg = str | bytes | int | float
Match = Literal["new", "same", "different"]
_MATCHES: dict[bytes, Match] = {b"new": "new", b"same": "same", b"different": "different"}


@dataclass(frozen=True, slots=True)
class Refused:
    """MAX_BACKLOG refused a publish: `queue`'s backlog was `backlog`."""

    queue: str
    backlog: int

    @classmethod
    def from_reply(cls, queue: bytes, backlog: int | bytes) -> Refused:
        return cls(records.as_text(queue), int(backlog))


@dataclass(frozen=True, slots=True)
class Unknown:
    """Parents named by a publish that do not exist: nothing was written."""

    ids: tuple[str, ...]


def _refusal(reply: list[bytes]) -> Refused | Unknown:
    """A publishing script's refusal: {queue, backlog}, or {'', unknown parent id...}."""
    if reply[0] == b"":
        return Unknown(tuple(records.as_text(one) for one in reply[1:]))
    return Refused.from_reply(reply[0], reply[1])


@dataclass(frozen=True, slots=True)
class Once:
    """A publish under an idempotency key: the job's id, and whether the key was new, or made
    by the same request, or by a different one."""

    id: str
    match: Match


def publish_args(
    batch: Sequence[NewJob], now: float, traceparent: str = "", max_backlog: int = 0
) -> list[Arg]:
    """What the publishing scripts take: the time, the trace context and MAX_BACKLOG (0 = no
    limit) once, then PUBLISH_JOB_ARGS values per job (see _publish_jobs.lua). A job's parents
    must come before it in `batch`, or exist already.

    `data` is RQ's layout, uncompressed: RQ reads raw JSON too, and small payloads gain
    nothing from zlib. `traceparent` ('' when tracing is off: nothing is written) is stored on
    every job of the batch, for its execution spans.
    """
    args: list[Arg] = [records.utc_iso(now), traceparent, max_backlog]
    for job in batch:
        data = orjson.dumps([job.type, None, [job.payload], {}])
        args += [
            job.id,
            job.queue,
            job.type,
            data,
            job.timeout,
            job.max_retries,
            job.backoff,
            job.result_ttl,
            job.failure_ttl,
            "" if job.run_at is None else job.run_at,
            _parents(job),
        ]
    return args


def _parents(job: NewJob) -> str:
    """'' for a job without parents; else '1' (allow failures) or '0', then the ids."""
    if not job.depends_on:
        return ""
    return ",".join(("1" if job.allow_failure else "0", *job.depends_on))


def publish_now(
    client: redis.Redis, batch: Sequence[NewJob], now: float | None = None
) -> Unknown | None:
    """PUBLISH on a synchronous client, with no backlog limit (tools, benchmarks and tests):
    None, or the parents that do not exist (nothing written)."""
    when = time.time() if now is None else now
    reply = lua.Script(client, scripts.PUBLISH)(publish_args(batch, when))
    refusal = _refusal(reply) if isinstance(reply, list) else None
    assert not isinstance(refusal, Refused)  # no backlog limit here
    return refusal


class Publish:
    """PUBLISH: a batch, all or nothing."""

    script = Script(scripts.PUBLISH)

    async def __call__(
        self, direct: Direct, batch: Sequence[NewJob], now: float, traceparent: str, limit: int
    ) -> Refused | Unknown | None:
        reply = await self.script(direct, publish_args(batch, now, traceparent, limit))
        return _refusal(reply) if isinstance(reply, list) else None


class PublishEach:
    """PUBLISH_EACH: single jobs sent together, each admitted or refused alone, in order."""

    script = Script(scripts.PUBLISH_EACH)

    async def __call__(
        self, direct: Direct, batch: Sequence[NewJob], now: float, limit: int
    ) -> list[Refused | Unknown | None]:
        replies = await self.script(direct, publish_args(batch, now, "", limit))
        return [None if reply == 1 else _refusal(reply) for reply in replies]


class PublishOnce:
    """PUBLISH_ONCE: one job under an idempotency key, made at most once while the key lives."""

    script = Script(scripts.PUBLISH_ONCE)

    async def __call__(
        self,
        direct: Direct,
        job: NewJob,
        key: str,
        fingerprint: str,
        ttl: int,
        now: float,
        traceparent: str,
        limit: int,
    ) -> Once | Refused | Unknown:
        published = publish_args([job], now, traceparent, limit)
        reply = await self.script(direct, [key, fingerprint, ttl, *published])
        if reply[1] == b"full":
            return _refusal([reply[0], *reply[2:]])
        return Once(reply[0].decode(), _MATCHES[reply[1]])
