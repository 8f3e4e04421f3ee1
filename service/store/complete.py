"""COMPLETE (complete.lua): a worker process records how its attempts ended, a batch in one
call. Replayed (a call whose reply was lost, sent again), it records nothing twice: an attempt
whose claim is no longer held comes back as `Fate.NONE`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from service.config.settings import Retention
from service.jobs import records
from service.jobs.states import Ending, Fate
from service.store import lua, scripts

log = logging.getLogger("service.store.complete")
_FATES = {fate.value.encode(): fate for fate in Fate}


@dataclass(frozen=True, slots=True)
class Completion:
    """One attempt's end, as COMPLETE takes it."""

    ending: Ending
    id: str
    queue: str
    member: str  # the claim: `<id>:<execution id>`
    value: bytes = b""  # the result (ok, as records.encode_return_value), else the error text
    started: float = 0.0  # epoch seconds; 0 for an attempt that never started
    ended: float = 0.0
    delay: float = 0.0  # seconds before a retry (fail)
    reason: str = ""  # why it failed: exception, timeout, worker_lost, ...

    def args(self) -> list[Any]:
        """Its nine values in COMPLETE's ARGV."""
        times = [repr(self.started), repr(self.ended)] if self.started else ["", ""]
        c = [self.ending.value, self.id, self.queue, self.member, self.value]
        return [*c, *times, self.delay, self.reason]


def complete_args(
    worker: str, completions: Sequence[Completion], now: float, limits: Sequence[int]
) -> list[Any]:
    args: list[Any] = [worker, records.utc_iso(now), now, *limits]
    for completion in completions:
        args += completion.args()
    return args


def fates(reply: Sequence[bytes]) -> list[Fate]:
    return [_FATES[fate] for fate in reply]


class Complete:
    """COMPLETE on an asyncio client (the worker's recorder). `max_crashes`: a job that has
    crashed its runner this many times fails (MAX_CRASHES).

    With `replicas` (DURABILITY=replicated: how many, and the timeout in ms) the script is
    followed by WAIT on the same connection (one pipeline), so a batch of outcomes counts as
    recorded once the replicas have it. A shortfall is logged, not retried: the outcomes are
    on the primary, and a replayed COMPLETE would record nothing (the claims are gone); if the
    primary is lost before its replicas catch up, those jobs run again (at least once)."""

    def __init__(
        self,
        client: aioredis.Redis,
        retention: Retention,
        max_crashes: int,
        replicas: tuple[int, int] | None = None,
    ) -> None:
        self._script = lua.ScriptAsync(client, scripts.COMPLETE)
        self._limits = [*retention.args(), max_crashes]
        self._replicas = replicas

    async def __call__(
        self, worker: str, completions: Sequence[Completion], now: float
    ) -> list[Fate]:
        """What became of each attempt, in order."""
        args = complete_args(worker, completions, now, self._limits)
        if self._replicas is None:
            return fates(await self._script(args))
        reply, acked = await self._script.replicated(args, self._replicas)
        if acked < self._replicas[0]:
            log.warning(
                "%d outcomes recorded on the primary, confirmed by %d of the %d replicas "
                "required within %d ms (DURABILITY=replicated): a failover before they catch "
                "up runs those jobs again",
                len(completions),
                acked,
                *self._replicas,
            )
        return fates(reply)


class CompleteSync:
    """`Complete` on a synchronous client (tools and tests)."""

    def __init__(self, client: redis.Redis, retention: Retention, max_crashes: int) -> None:
        self._script = lua.Script(client, scripts.COMPLETE)
        self._limits = [*retention.args(), max_crashes]

    def __call__(self, worker: str, completions: Sequence[Completion], now: float) -> list[Fate]:
        return fates(self._script(complete_args(worker, completions, now, self._limits)))
