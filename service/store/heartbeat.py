"""HEARTBEAT (heartbeat.lua): a worker process's registration refreshed, as RQ's workers keep
theirs, and the started-registry entries of the jobs it holds pushed ahead of the clock."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from service.store import lua, scripts


class Heartbeat:
    """HEARTBEAT on a synchronous client (the worker's heartbeat thread)."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = lua.Script(client, scripts.HEARTBEAT)

    def __call__(
        self,
        worker: str,
        ttl: int,
        score: float,
        registration: Mapping[str, str | int],
        queues: Sequence[str],
        held: Iterable[tuple[str, str]],
    ) -> None:
        """Keep `worker`'s registration (its fields, the queues it serves) for `ttl` seconds,
        and move the started-registry entries it holds, (queue, member) pairs, to `score`; an
        entry recovered meanwhile is not added back."""
        args: list[Any] = [worker, ttl, score, *itertools.chain(*registration.items()), "--"]
        args += [*queues, "--", *itertools.chain(*held)]
        self._script(args)
