"""Shared memory between the supervisor and its worker processes: liveness and counters.

Each worker process owns one slot; the supervisor reads every slot to answer /health and
to write the shutdown summary. Plain doubles, no locks: one writer per slot.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

# Field offsets inside a slot.
TICK, DEADLINE, READY, FINISHED, FAILED, RETRIED, INTERRUPTED, CANCELED = range(8)
WIDTH = 8
JOB_ID_BYTES = 64  # room for the running job's id (ours are 32 hex characters)
COUNTERS = {
    "finished": FINISHED,
    "failed": FAILED,
    "retried": RETRIED,
    "interrupted": INTERRUPTED,
    "canceled": CANCELED,
}


class Slot:
    """One worker process's view of its own slot."""

    def __init__(self, array: Any, job_ids: Any, index: int) -> None:
        self._array = array
        self._base = index * WIDTH
        self._job_ids = job_ids
        self._id_base = index * JOB_ID_BYTES

    def _set(self, field: int, value: float) -> None:
        self._array[self._base + field] = value

    def get(self, field: int) -> float:
        return float(self._array[self._base + field])

    def tick(self) -> None:
        """The main loop is alive (monotonic clocks agree across processes on one host)."""
        self._set(TICK, time.monotonic())

    def busy(self, timeout: float, job_id: str) -> None:
        now = time.monotonic()
        self._set(TICK, now)
        self._set(DEADLINE, now + timeout)
        encoded = job_id.encode()[:JOB_ID_BYTES].ljust(JOB_ID_BYTES, b"\0")
        self._job_ids[self._id_base : self._id_base + JOB_ID_BYTES] = encoded

    def idle(self) -> None:
        self._set(DEADLINE, 0.0)
        self._set(TICK, time.monotonic())
        self._job_ids[self._id_base] = b"\0"

    def job_id(self) -> str:
        """The job this process is running ('' between jobs): the one to blame if it dies."""
        raw = bytes(self._job_ids[self._id_base : self._id_base + JOB_ID_BYTES])
        return raw.split(b"\0", 1)[0].decode()

    def set_ready(self, ready: bool) -> None:
        self._set(READY, 1.0 if ready else 0.0)

    def count(self, *fates: str) -> None:
        """Add each job's fate (a COMPLETE result: finished, failed, ...) to its counter."""
        for fate in fates:
            if fate in COUNTERS:
                self._set(COUNTERS[fate], self.get(COUNTERS[fate]) + 1)

    def reset(self) -> None:
        for field in (TICK, DEADLINE, READY):
            self._set(field, 0.0)
        self._set(TICK, time.monotonic())
        self._job_ids[self._id_base] = b"\0"


class Slots:
    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.array = context.Array("d", size * WIDTH, lock=False)
        self.job_ids = context.Array("c", size * JOB_ID_BYTES, lock=False)
        self.size = size

    def __getitem__(self, index: int) -> Slot:
        return Slot(self.array, self.job_ids, index)

    def totals(self) -> dict[str, int]:
        return {
            name: int(sum(self[i].get(field) for i in range(self.size)))
            for name, field in COUNTERS.items()
        }
