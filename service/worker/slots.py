"""Shared memory between the supervisor and its worker processes: liveness, counters, and the
jobs each process is running now.

Each worker process owns one block; the supervisor reads every block to answer /health and
/metrics, to write the shutdown summary, and, when a process dies, to know which jobs it was
running: those, and only those, are blamed for its death. A block has two places per slot of
WORKER_CONCURRENCY: one per thread lane (plain handlers) and one per event-loop task (async
handlers), each holding the id of the job running there ('' when idle). Plain doubles and
bytes, no locks: every field has one writer.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from service.jobs.states import Fate

# Field offsets inside a block's numbers.
TICK, READY, RETIRING, FINISHED, FAILED, RETRIED, INTERRUPTED, CANCELED = range(8)
WIDTH = 8
JOB_ID_BYTES = 64  # room for a running job's id (ours are 32 hex characters)
COUNTERS = {
    Fate.FINISHED: FINISHED,
    Fate.FAILED: FAILED,
    Fate.RETRIED: RETRIED,
    Fate.INTERRUPTED: INTERRUPTED,
    Fate.CANCELED: CANCELED,
}


class Block:
    """One worker process's view of its own block."""

    def __init__(self, numbers: Any, job_ids: Any, index: int, places: int) -> None:
        self._numbers = numbers
        self._base = index * WIDTH
        self._job_ids = job_ids
        self.places = places  # 2 x WORKER_CONCURRENCY: a lane's and a task's per slot
        self._id_base = index * places * JOB_ID_BYTES

    def _set(self, field: int, value: float) -> None:
        self._numbers[self._base + field] = value

    def get(self, field: int) -> float:
        return float(self._numbers[self._base + field])

    def tick(self) -> None:
        """The event loop is alive (monotonic clocks agree across processes on one host)."""
        self._set(TICK, time.monotonic())

    def set_ready(self, ready: bool) -> None:
        self._set(READY, 1.0 if ready else 0.0)

    def set_retiring(self) -> None:
        """A job did not stop when told to: this process finishes the rest and exits."""
        self._set(RETIRING, 1.0)

    def count(self, *fates: Fate) -> None:
        """Add each job's fate (a COMPLETE result: finished, failed, ...) to its counter."""
        for fate in fates:
            if fate in COUNTERS:
                self._set(COUNTERS[fate], self.get(COUNTERS[fate]) + 1)

    def running(self, place: int, job_id: str) -> None:
        """`job_id` runs at `place` now (a lane's index, or WORKER_CONCURRENCY + a task's)."""
        start = self._id_base + place * JOB_ID_BYTES
        encoded = job_id.encode()[:JOB_ID_BYTES].ljust(JOB_ID_BYTES, b"\0")
        self._job_ids[start : start + JOB_ID_BYTES] = encoded

    def idle(self, place: int) -> None:
        self._job_ids[self._id_base + place * JOB_ID_BYTES] = b"\0"

    def running_ids(self) -> list[str]:
        """The jobs running in this process now: the ones to blame if it dies."""
        raw = bytes(self._job_ids[self._id_base : self._id_base + self.places * JOB_ID_BYTES])
        ids = (
            raw[i : i + JOB_ID_BYTES].split(b"\0", 1)[0] for i in range(0, len(raw), JOB_ID_BYTES)
        )
        return [job_id.decode() for job_id in ids if job_id]

    def busy(self) -> int:
        """How many of this process's slots run a job now."""
        start, step = self._id_base, JOB_ID_BYTES
        return sum(self._job_ids[start + i * step] != b"\0" for i in range(self.places))

    def reset(self) -> None:
        for field in (TICK, READY, RETIRING):
            self._set(field, 0.0)
        self._set(TICK, time.monotonic())
        for place in range(self.places):
            self.idle(place)


class Slots:
    """The blocks of every worker process of a container, in memory the processes share."""

    def __init__(self, processes: int, concurrency: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.places = 2 * concurrency
        self.numbers = context.Array("d", processes * WIDTH, lock=False)
        self.job_ids = context.Array("c", processes * self.places * JOB_ID_BYTES, lock=False)
        self.size = processes

    def __getitem__(self, index: int) -> Block:
        return Block(self.numbers, self.job_ids, index, self.places)

    def totals(self) -> dict[Fate, int]:
        return {
            name: int(sum(self[i].get(field) for i in range(self.size)))
            for name, field in COUNTERS.items()
        }
