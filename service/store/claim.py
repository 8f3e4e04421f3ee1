"""CLAIM (claim.lua): a worker process takes up to `count` queued jobs, in drain order, and
holds them in the started registries."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from service.jobs import records
from service.store import lua, scripts

log = logging.getLogger("service.store.claim")


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job as the CLAIM script hands it over."""

    id: str
    member: str  # `<id>:<execution id>` in the started registry
    data: bytes
    timeout: float
    attempt: int
    queue: str
    backoff: str  # the job's Backoff policy as JSON ('' retries at once)
    enqueued_at: str  # RQ's ISO timestamp of the (re-)enqueue this attempt waited from
    traceparent: str = ""  # the trace context the job carries ('' if published untraced)
    crashes: int = 0  # runners it has killed: above 0 it runs alone, in a forked child

    @classmethod
    def from_reply(cls, row: Sequence[Any]) -> Claimed:
        """One job of CLAIM's reply."""
        job_id, member, data, timeout, attempt, queue, backoff, enqueued, trace, crashes = row
        return cls(
            job_id.decode(),
            member.decode(),
            data,
            float(timeout),
            int(attempt),
            queue.decode(),
            backoff.decode(),
            enqueued.decode(),
            trace.decode(),
            int(crashes),
        )


class _Claiming:
    """What a claim says of its claimer: the worker process and the queues it serves (in drain
    order: the first queue first)."""

    def __init__(self, worker: str, queues: Sequence[str]) -> None:
        self.worker = worker
        self.queues = list(queues)

    def _args(self, count: int, score: float, execution: str, now: float | None) -> list[Any]:
        return [count, self.worker, records.utc_iso(now), score, execution, *self.queues]


class Claim(_Claiming):
    """CLAIM on an asyncio client (the worker's loop)."""

    def __init__(
        self,
        client: aioredis.Redis,
        worker: str,
        queues: Sequence[str],
        replicas: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(worker, queues)
        self._script = lua.ScriptAsync(client, scripts.CLAIM)
        self._replicas = replicas  # DURABILITY=replicated: WAIT after each claim

    async def __call__(
        self, count: int, *, score: float, execution: str, now: float | None = None
    ) -> list[Claimed]:
        """Up to `count` jobs, now held by the worker in the started registries at `score`, each
        with an execution id starting with `execution` (unique per call)."""
        args = self._args(count, score, execution, now)
        if self._replicas is None:
            rows = await self._script(args)
        else:
            # A claim the replicas miss would, after a failover, let another worker run the
            # same attempt again: wait for them. A shortfall still runs the jobs (their claim
            # is on the primary); the window is logged.
            rows, acked = await self._script.replicated(args, self._replicas)
            if rows and acked < self._replicas[0]:
                log.warning(
                    "%d jobs claimed, confirmed by %d of the %d replicas required "
                    "(DURABILITY=replicated): a failover now may run them twice",
                    len(rows),
                    acked,
                    self._replicas[0],
                )
        return [Claimed.from_reply(row) for row in rows]


class ClaimSync(_Claiming):
    """`Claim` on a synchronous client (tools and tests)."""

    def __init__(self, client: redis.Redis, worker: str, queues: Sequence[str]) -> None:
        super().__init__(worker, queues)
        self._script = lua.Script(client, scripts.CLAIM)

    def __call__(
        self, count: int, *, score: float, execution: str, now: float | None = None
    ) -> list[Claimed]:
        rows = self._script(self._args(count, score, execution, now))
        return [Claimed.from_reply(row) for row in rows]
