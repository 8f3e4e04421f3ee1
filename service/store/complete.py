"""COMPLETE (complete.lua): a worker process records how its attempts ended, a batch in one
call. Replayed (a call whose reply was lost, sent again), it records nothing twice: an attempt
whose claim is no longer held comes back as `Fate.NONE`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from service.config.settings import Retention
from service.jobs import records
from service.jobs.states import Ending, Fate
from service.store import lua, scripts

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
    crashed its runner this many times fails (MAX_CRASHES)."""

    def __init__(self, client: aioredis.Redis, retention: Retention, max_crashes: int) -> None:
        self._script = lua.ScriptAsync(client, scripts.COMPLETE)
        self._limits = [*retention.args(), max_crashes]

    async def __call__(
        self, worker: str, completions: Sequence[Completion], now: float
    ) -> list[Fate]:
        """What became of each attempt, in order."""
        return fates(await self._script(complete_args(worker, completions, now, self._limits)))


class CompleteSync:
    """`Complete` on a synchronous client (tools and tests)."""

    def __init__(self, client: redis.Redis, retention: Retention, max_crashes: int) -> None:
        self._script = lua.Script(client, scripts.COMPLETE)
        self._limits = [*retention.args(), max_crashes]

    def __call__(self, worker: str, completions: Sequence[Completion], now: float) -> list[Fate]:
        return fates(self._script(complete_args(worker, completions, now, self._limits)))
