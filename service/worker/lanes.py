"""Threads that run plain (blocking) handlers: up to WORKER_CONCURRENCY per worker process,
started as they are needed, all fed from one queue.

A job running in a thread is stopped (timeout, cancel, forced shutdown) by an exception raised
into that thread with `PyThreadState_SetAsyncExc`, as Dramatiq's time limits do. It lands at
the thread's next bytecode: a thread blocked in C code (a sleep, a socket read) sees it only
when that call returns. The process watches for that (see WorkerProcess._watch).

An exception meant for one job must never reach the next, or the lane's own loop: a lane is
*armed* only while it runs a job, the exception is only ever raised into an armed lane, and
disarming (under the same lock) clears any exception still pending, retrying if one lands
while it disarms.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Callable

from service.worker.execute import Attempt, Outcome, Stop

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in the thread at its next bytecode; None clears a pending one."""
    _set_async_exc(ctypes.c_ulong(thread_id), None if exc is None else ctypes.py_object(exc))


class Lane:
    """One thread, running one job at a time."""

    def __init__(self, index: int) -> None:
        self.index = index  # its place in the process's shared-memory block
        self.attempt: Attempt | None = None  # the job it runs now
        self.abandoned = False  # given up on (stuck past a stop): it exits after this job
        self._armed = False
        self._lock = threading.Lock()
        self.thread_id = 0

    def arm(self, attempt: Attempt) -> None:
        with self._lock:
            self.attempt = attempt
            self._armed = True

    def disarm(self) -> None:
        """From here on nothing is raised in this thread, and nothing is pending."""
        while True:
            try:
                with self._lock:
                    self._armed = False
                    self.attempt = None
                    _raise_in(self.thread_id, None)
                return
            except Stop:
                continue  # raised just before we disarmed: nothing more can come

    def stop(self, attempt: Attempt, why: type[Stop]) -> bool:
        """Raise `why` in this thread if it is running `attempt`."""
        with self._lock:
            if not self._armed or self.attempt is not attempt:
                return False
            _raise_in(self.thread_id, why)
            return True


class Lanes:
    """The process's lanes. `execute(attempt, place)` runs one job in the calling lane;
    `admit(attempt)` is asked just before a job starts and may answer its outcome instead
    (canceled, or put back during a shutdown); `ended(outcome)` is called in the lane's thread
    with every outcome."""

    def __init__(
        self,
        size: int,
        execute: Callable[[Attempt, int], Outcome],
        admit: Callable[[Attempt], Outcome | None],
        ended: Callable[[Outcome], None],
    ) -> None:
        self.size = size
        self._execute = execute
        self._admit = admit
        self._ended = ended
        self._queue: queue.SimpleQueue[Attempt | None] = queue.SimpleQueue()
        self.lanes: list[Lane] = []
        self._idle = 0  # lanes waiting for a job
        self._lock = threading.Lock()

    def submit(self, attempt: Attempt) -> None:
        self._queue.put(attempt)
        with self._lock:
            if self._idle == 0 and len(self.lanes) < self.size:
                self._start()

    def running(self) -> list[tuple[Lane, Attempt]]:
        return [(lane, a) for lane in self.lanes if (a := lane.attempt) is not None]

    def stop(self, attempt: Attempt, why: type[Stop]) -> bool:
        """Raise `why` in the lane running `attempt`; False if none runs it now."""
        return any(lane.stop(attempt, why) for lane in self.lanes)

    def close(self) -> None:
        """Let every lane's thread end once the queue is empty."""
        for _ in self.lanes:
            self._queue.put(None)

    def _start(self) -> None:
        lane = Lane(len(self.lanes))
        self.lanes.append(lane)
        thread = threading.Thread(target=self._serve, args=(lane,), name=f"lane-{lane.index}")
        thread.daemon = True  # a lane stuck in C code must not hold the process open
        thread.start()

    def _serve(self, lane: Lane) -> None:
        lane.thread_id = threading.get_ident()
        while not lane.abandoned:
            with self._lock:
                self._idle += 1
            attempt = self._queue.get()
            with self._lock:
                self._idle -= 1
            if attempt is None:
                return
            outcome = self._admit(attempt)
            if outcome is None:
                try:
                    outcome = self._run(lane, attempt)
                except Stop as stop:  # raised after the handler had returned
                    outcome = attempt.stopped(stop)
            self._ended(outcome)

    def _run(self, lane: Lane, attempt: Attempt) -> Outcome:
        try:
            lane.arm(attempt)
            return self._execute(attempt, lane.index)
        finally:
            lane.disarm()
