"""When Redis cannot take a worker process's calls: unreachable, stalled, or full (it refuses
scripts that would grow it). Such trouble passes by itself; the process waits it out, not
ready meanwhile, and says so once per episode, not once per retry."""

from __future__ import annotations

import logging
import time

import redis

from service.store.connection import out_of_memory
from service.worker.slots import Block

log = logging.getLogger("service.worker")


def passing(exc: Exception) -> bool:
    """Trouble that passes by itself: Redis unreachable, stalled, full, or demoted to a
    replica (READONLY: the connection is dropped and the next goes to the new primary)."""
    lost = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OSError)
    return isinstance(exc, lost) or out_of_memory(exc)


def describe(exc: Exception) -> str:
    if out_of_memory(exc):
        return "Redis is full (used memory > maxmemory)"
    return f"Redis unavailable ({exc})"


class Trouble:
    """The current episode of trouble of one worker process, if any."""

    def __init__(self, name: str, block: Block) -> None:
        self.name = name
        self.block = block
        self.holding = False  # outcomes Redis refused wait to be recorded: claim nothing
        self._since: float | None = None

    def seen(self, exc: Exception) -> None:
        """A claim failed, or outcomes were refused: not ready; one line per episode."""
        self.block.set_ready(False)
        if self._since is None:
            self._since = time.monotonic()
            log.warning(
                "worker %s: %s; not ready: outcomes are kept and nothing is claimed until "
                "it takes them, retrying with backoff (up to 5s)",
                self.name,
                describe(exc),
            )

    def over(self) -> None:
        """A call went through: ready again unless outcomes still wait."""
        if self._since is not None and not self.holding:
            waited = time.monotonic() - self._since
            log.info("worker %s: Redis answers again after %.1fs", self.name, waited)
            self._since = None
        self.block.set_ready(not self.holding)
