"""A worker process's outcomes on their way to Redis: gathered into batches, each recorded by
one COMPLETE script, kept and retried while Redis cannot take them.

A batch goes at once when nothing else runs (a lone job's result is visible at once), when it
holds WORKER_BATCH_SIZE outcomes, or when they carry MAX_RESULT_BYTES of results and errors (so
a COMPLETE that starts just under `maxmemory` passes it by its own writes only); else at least
every BATCH_TARGET_SECONDS. One call is in flight at a time: what ends meanwhile goes in the
next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from service.config import constants
from service.config.settings import Settings
from service.jobs import records
from service.jobs.states import Fate
from service.store.complete import Complete
from service.telemetry import logs
from service.worker import job_metrics
from service.worker.execute import Outcome
from service.worker.trouble import Trouble, passing

log = logging.getLogger("service.worker")
LOGGED_ERROR_CHARS = 200  # of an error's last line in an outcome's log line


class Recorder:
    def __init__(
        self,
        settings: Settings,
        name: str,
        complete: Complete,
        trouble: Trouble,
        recorded: Callable[[list[Outcome], list[Fate]], None],
    ) -> None:
        self.settings = settings
        self.name = name
        self._complete = complete
        self.trouble = trouble
        self._recorded = recorded  # (outcomes, what COMPLETE made of each), once recorded
        self.pending: list[Outcome] = []  # ended, not recorded yet
        self._pending_bytes = 0  # of results and errors in `pending`
        self._recording = False  # a COMPLETE call is in flight
        self.forced = False  # a forced stop: outcomes Redis will not take are given up
        self._ready = asyncio.Event()  # something to record
        self._now = asyncio.Event()  # and it should go at once
        self.outcome_log = logs.BatchLog(log, settings)

    def add(self, outcome: Outcome, idle: bool) -> None:
        """An outcome to record; `idle`: nothing else runs in the process now."""
        self.pending.append(outcome)
        self._pending_bytes += len(outcome.value)
        self._ready.set()
        if (
            idle
            or len(self.pending) >= self.settings.worker_batch_size
            or self._pending_bytes >= self.settings.max_result_bytes
        ):
            self._now.set()

    def soon(self) -> None:
        """Record what is pending without waiting for more."""
        self._now.set()

    @property
    def idle(self) -> bool:
        return not self.pending and not self._recording

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            if not self._now.is_set():  # others still run: gather their outcomes too
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(constants.BATCH_TARGET_SECONDS):
                        await self._now.wait()
            self._now.clear()
            batch, self.pending, self._pending_bytes = self.pending, [], 0
            if batch:
                self._recording = True
                try:
                    await self._record(batch)
                finally:
                    self._recording = False

    async def _record(self, outcomes: list[Outcome]) -> None:
        """Jobs already ran: while Redis is unreachable or full (it refuses COMPLETE whole),
        keep their outcomes and keep trying, with backoff, rather than lose them, until a
        forced stop gives up (the jobs then run again elsewhere: at least once). The heartbeat
        still lands on a full Redis, so the held jobs do not look abandoned."""
        completions = [outcome.completion() for outcome in outcomes]
        backoff = 0.1
        while True:
            try:
                fates = await self._complete(self.name, completions, time.time())
                break
            except (redis.RedisError, OSError) as exc:
                if self.forced or not passing(exc):
                    raise
                self.trouble.holding = True
                self.trouble.seen(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self.trouble.holding = False
        self.trouble.over()
        self._recorded(outcomes, fates)
        for outcome, fate in zip(outcomes, fates, strict=True):
            if fate:
                duration = outcome.ended - outcome.started if outcome.started else None
                job_metrics.ended(outcome.type, fate, outcome.reason, duration)
                self.outcome_log.add(*_outcome_line(outcome, fate))
        self.outcome_log.flush()


_LEVELS = {
    Fate.FINISHED: logging.INFO,
    Fate.CANCELED: logging.INFO,
    Fate.INTERRUPTED: logging.INFO,
    Fate.RETRIED: logging.WARNING,
    Fate.FAILED: logging.ERROR,
}


def _outcome_line(outcome: Outcome, fate: Fate) -> tuple[int, str, dict[str, Any]]:
    """One line per job outcome: id, type, attempt, duration and what happens next; of the
    error only its last line (payloads and tracebacks can carry secrets; the job keeps them)."""
    claimed = outcome.claimed
    duration = outcome.ended - outcome.started if outcome.started else 0.0
    detail = ""
    if fate in (Fate.RETRIED, Fate.FAILED):
        summary = records.error_summary(outcome.error, LOGGED_ERROR_CHARS) or "no error text"
        detail = f" ({outcome.reason}: {summary})"
        detail += "; will retry" if fate is Fate.RETRIED else "; dead-lettered"
    message = (
        f"job {claimed.id} {outcome.type} {fate} in {duration:.3f}s, "
        f"attempt {claimed.attempt}{detail}"
    )
    fields: dict[str, Any] = {
        "job_id": claimed.id,
        "job_type": outcome.type,
        "queue": claimed.queue,
        "attempt": claimed.attempt,
        "duration": round(duration, 6),
        "outcome": fate,
    }
    if outcome.trace_id:  # tracing on: the line leads to the attempt's trace
        message += f", trace {outcome.trace_id}"
        fields["trace_id"] = outcome.trace_id
    return _LEVELS[fate], message, fields
