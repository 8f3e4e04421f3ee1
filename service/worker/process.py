"""One worker process: an event loop that claims jobs, runs up to WORKER_CONCURRENCY of them
at once, and records their outcomes.

- `async def` handlers run as tasks on the loop; plain handlers on thread lanes
  (service/worker/lanes.py); a job that must run alone, in a child a lane forks
  (service/worker/isolation.py).
- Claims fit the slots: the process holds no more jobs than it can start now, plus, while its
  jobs take less than BATCH_TARGET_SECONDS, about as many as its slots run in that time. So a
  claimed job never waits behind a long one while a slot elsewhere is free, and short jobs
  cost one claim per batch.
- Outcomes are recorded by one COMPLETE script per batch: at once when nothing else runs,
  else at least every BATCH_TARGET_SECONDS.
- A watchdog stops jobs past their timeout (a task is cancelled, an exception is raised in a
  lane's thread). A job still running STOP_GRACE_SECONDS after being told to stop is given
  up on: its outcome is recorded, the process claims nothing more, lets its other jobs finish
  and exits with EXIT_RETIRED; the supervisor starts another.

When its queues are empty the process blocks on their wake-up tokens: job ids never leave a
queue list except inside the CLAIM script, so a crash while waiting can lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import threading
import time
import uuid
from collections import deque
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from service.config import constants
from service.config.settings import Settings
from service.jobs import registry as registry_module
from service.jobs.registry import Registry
from service.jobs.states import Fate
from service.store.claim import Claim, Claimed
from service.store.complete import Complete
from service.store.connection import connect_async
from service.telemetry import logs, tracing
from service.worker import job_metrics
from service.worker.clients import Clients
from service.worker.execute import (
    Attempt,
    Canceled,
    Interrupted,
    JobTimeout,
    Outcome,
    Stop,
    run_async,
    run_sync,
    span_of,
)
from service.worker.isolation import run_alone
from service.worker.lanes import Lanes
from service.worker.recorder import Recorder
from service.worker.registration import Registration
from service.worker.slots import Block, Slots
from service.worker.trouble import Trouble

log = logging.getLogger("service.worker")

WAIT_SECONDS = 0.5  # longest block on empty queues: bounds how late a stop is noticed
WATCH_SECONDS = 0.05  # how often running and waiting jobs are looked at
STOP_GRACE_SECONDS = 2.0  # a job told to stop that still runs after this is given up on


def main(settings: Settings, slots: Slots, index: int, name: str, served: list[str]) -> None:
    """Entry point of one worker process, spawned by the supervisor: nothing is inherited, and
    only what running jobs needs is imported here (not the supervisor's modules)."""
    logs.configure(settings, f"worker-{index}")
    tracing.start("service-worker")
    handlers = registry_module.load(settings.handler_modules, import_models=False)
    try:
        worker = WorkerProcess(settings, handlers, slots[index], served, name)
        code = asyncio.run(worker.run())
    finally:
        tracing.shutdown()  # export the last spans
    if code == constants.EXIT_RETIRED:  # a lane may be stuck in C code: do not wait for it
        logging.shutdown()
        os._exit(code)
    raise SystemExit(code)


class WorkerProcess:
    def __init__(
        self, settings: Settings, registry: Registry, block: Block, queues: list[str], name: str
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.block = block
        self.queues = queues  # drain order: every high queue, then default, then low
        self.name = name
        self.slots = settings.worker_concurrency
        self.stopping = False  # SIGTERM: claim nothing more, let running jobs finish
        self._supervisor = os.getppid()
        self.forced = False  # SIGUSR1: interrupt running jobs
        self.retiring = False  # a job would not stop: finish the others, then exit
        self.held: dict[str, Attempt] = {}  # claimed, outcome not recorded yet, by member
        self._held_lock = threading.Lock()  # the heartbeat thread reads `held`
        self._take_lock = threading.Lock()  # a lane taking a job, or the loop giving it back
        self.active = 0  # claimed jobs that have not ended
        self.waiting: deque[Attempt] = deque()  # async jobs claimed, waiting for a slot
        self.tasks: dict[Attempt, asyncio.Task[None]] = {}  # async jobs running
        self._places = list(range(2 * self.slots - 1, self.slots - 1, -1))  # for tasks
        self._cancel: set[str] = set()  # ids a `stop-job` command named
        self._avg_seconds = float("inf")  # running mean job time (no prefetch until known)
        self._exec_seq = itertools.count(1)
        self._exec_token = uuid.uuid4().hex[:8]
        self.registration = Registration(settings, name, queues)
        self.trouble = Trouble(name, block)
        self._from_lanes: deque[Outcome] = deque()
        self._wake_scheduled = False
        self._blpop: asyncio.Task[Any] | None = None

    # --- life cycle ---
    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()  # a job ended, or a signal came
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor relays Ctrl-C as SIGTERM
        self.loop.add_signal_handler(signal.SIGTERM, self._on_stop)
        self.loop.add_signal_handler(signal.SIGUSR1, self._on_force)
        self.redis: aioredis.Redis = connect_async(self.settings.queue_redis)
        replicas = self.settings.replicas
        self._claim_jobs = Claim(self.redis, self.name, self.queues, replicas)
        complete = Complete(
            self.redis, self.settings.retention, self.settings.max_crashes, replicas
        )
        self.recorder = Recorder(self.settings, self.name, complete, self.trouble, self._recorded)
        job_metrics.label_types(self.registry.names())
        self.clients = Clients(self.settings)
        self.lanes = Lanes(self.slots, self._execute_in_lane, self._admit, self._lane_ended)
        beat = threading.Thread(
            target=self.registration.beat,
            args=(self._held_jobs, self._slots_busy),
            name="heartbeat",
            daemon=True,
        )
        beat.start()
        # Registered before claiming (as RQ's workers are): `rq info`, GET /queues and the
        # status command count it from its first job on.
        registered = self.registration.registered
        await asyncio.to_thread(registered.wait, constants.WORKER_SOCKET_TIMEOUT)
        helpers = [
            asyncio.create_task(self.recorder.run()),
            asyncio.create_task(self._watch()),
            asyncio.create_task(self._commands()),
        ]
        for task in helpers:
            task.add_done_callback(self._helper_ended)
        log.debug("worker %s started on %s", self.name, ",".join(self.queues))
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        self.lanes.close()
        self.registration.deregister()
        self.clients.close()
        await self.clients.aclose()
        await self.redis.aclose()
        return constants.EXIT_RETIRED if self.retiring else constants.EXIT_OK

    def _helper_ended(self, task: asyncio.Task[None]) -> None:
        """A helper task ends only when the process stops; anything else is a bug: say so,
        and stop taking jobs (the supervisor replaces the process once it exits)."""
        if task.cancelled():
            return
        exc = task.exception()
        log.error("worker %s: %s stopped: %r", self.name, task.get_coro(), exc, exc_info=exc)
        self._on_stop()

    def _on_stop(self) -> None:
        self.stopping = True
        self._wake()

    def _on_force(self) -> None:
        self.stopping = self.forced = self.recorder.forced = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        if self._blpop is not None:
            self._blpop.cancel()

    # --- claiming ---
    async def _claim_loop(self) -> None:
        backoff = 0.1
        while not (self.stopping or self.retiring):
            self.block.tick()
            if self._orphaned():  # the supervisor died (SIGKILL): do not linger
                log.warning("worker %s: supervisor gone; stopping", self.name)
                self.stopping = True
                break
            room = 0 if self.trouble.holding else self._room()
            if room == 0:  # full, or holding outcomes Redis will not take: claim nothing
                await self._wait_changed(WAIT_SECONDS)
                continue
            try:
                claimed = await self._claim(room)
            except (redis.RedisError, OSError) as exc:
                self.trouble.seen(exc)
                await self._wait_changed(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.trouble.over()
            self.block.set_ready(True)
            backoff = 0.1
            for job in claimed:
                self._dispatch(Attempt(job, self.registry, self.settings.max_result_bytes))
            if len(claimed) < room:  # the queues ran dry: wait for a token
                await self._wait_for_work()

    def _room(self) -> int:
        """How many jobs to claim now: enough to fill the free slots, plus, for jobs shorter
        than BATCH_TARGET_SECONDS, about as many as the slots run in that time; topped up
        in halves, not one by one."""
        batch = self.settings.worker_batch_size
        prefetch = 0
        if self._avg_seconds < constants.BATCH_TARGET_SECONDS:
            prefetch = int(self.slots * constants.BATCH_TARGET_SECONDS / self._avg_seconds)
        capacity = self.slots + min(batch, prefetch)
        room = min(batch, capacity - self.active)
        if room <= 0:
            return 0
        return room if self.active < self.slots or 2 * room >= capacity else 0

    async def _claim(self, count: int) -> list[Claimed]:
        return await self._claim_jobs(
            count,
            score=self.registration.score(),
            execution=f"{self._exec_token}{next(self._exec_seq):x}x",
        )

    async def _wait_changed(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()
        self._changed.clear()

    async def _wait_for_work(self) -> None:
        """Block until a wake-up token arrives (one job, one woken worker), WAIT_SECONDS pass,
        or a signal comes. Jobs pushed by other tools leave no token: the timeout finds them."""
        keys = [constants.wake_key(q) for q in self.queues]
        self._blpop = asyncio.ensure_future(self.redis.blpop(keys, WAIT_SECONDS))
        try:
            await self._blpop
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this task is cancelled, not the wait
                raise
        except (redis.RedisError, OSError) as exc:
            log.debug("waiting for work: %s", exc)
        finally:
            self._blpop = None

    # --- running ---
    def _dispatch(self, attempt: Attempt) -> None:
        with self._held_lock:
            self.held[attempt.claimed.member] = attempt
        self.active += 1
        early = self._refusal(attempt) or attempt.rejected()
        if early is not None:
            self._ended(early)
        elif attempt.alone or not attempt.is_async:
            self.lanes.submit(attempt)
        elif len(self.tasks) < self.slots:
            self._start_task(attempt)
        else:
            self.waiting.append(attempt)

    def _admit(self, attempt: Attempt) -> Outcome | None:
        """Asked just before a job starts (in a lane's thread too): its outcome if it must not
        start; None if it may, and from then on it can no longer be given back."""
        with self._take_lock:
            if attempt.ended:
                return attempt.skipped()  # given back: that outcome is recorded already
            refusal = self._refusal(attempt)
            if refusal is None:
                attempt.taken = True
            return refusal

    def _refusal(self, attempt: Attempt) -> Outcome | None:
        """The outcome of a job that must not start: canceled, or put back for a shutdown."""
        if attempt.claimed.id in self._cancel or attempt.stop is Canceled:
            return attempt.stopped(Canceled)
        if self.stopping or self.retiring or attempt.stop is not None:
            return attempt.skipped()
        return None

    def _give_back(self, attempt: Attempt) -> None:
        """A job claimed ahead that has not started: back to the head of its queue (for a
        process with a free slot), and no claiming ahead until jobs prove short again."""
        with self._take_lock:
            if attempt.taken or attempt.ended:
                return
            attempt.ended = True  # from here no lane takes it
        self._avg_seconds = float("inf")
        self._account(attempt.skipped())

    def _execute_in_lane(self, attempt: Attempt, place: int) -> Outcome:
        self.block.running(place, attempt.claimed.id)
        try:
            if attempt.alone:
                with span_of(attempt) as finish:
                    return finish(run_alone(attempt, self.settings))
            return run_sync(attempt, self.clients)
        finally:
            self.block.idle(place)

    def _start_task(self, attempt: Attempt) -> None:
        attempt.taken = True  # on the loop's thread, as the give-back: no lock needed
        place = self._places.pop()
        self.tasks[attempt] = asyncio.create_task(self._run_task(attempt, place))

    async def _run_task(self, attempt: Attempt, place: int) -> None:
        self.block.running(place, attempt.claimed.id)
        try:
            outcome = await run_async(attempt, self.clients)
        except asyncio.CancelledError:  # not by us: the loop itself is closing
            outcome = attempt.stopped(Interrupted)
        finally:
            self.block.idle(place)
            self._places.append(place)
            del self.tasks[attempt]
        self._ended(outcome)
        while self.waiting and len(self.tasks) < self.slots:
            waiting = self.waiting.popleft()
            early = self._admit(waiting)
            if early is not None:
                self._ended(early)
            else:
                self._start_task(waiting)

    def _lane_ended(self, outcome: Outcome) -> None:
        """In a lane's thread: hand the outcome to the loop, waking it once per batch."""
        self._from_lanes.append(outcome)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self.loop.call_soon_threadsafe(self._collect)

    def _collect(self) -> None:
        self._wake_scheduled = False  # before draining: an outcome added now wakes us again
        while self._from_lanes:
            self._ended(self._from_lanes.popleft())

    def _ended(self, outcome: Outcome) -> None:
        attempt = self.held.get(outcome.claimed.member)
        if attempt is None or attempt.ended:
            return  # given up on or given back before: that outcome is recorded already
        attempt.ended = True
        self._account(outcome)

    def _account(self, outcome: Outcome) -> None:
        """A held job's outcome is known: free its slot and queue the outcome for recording."""
        self.active -= 1
        if outcome.started:
            seconds = outcome.ended - outcome.started
            if self._avg_seconds == float("inf"):
                self._avg_seconds = seconds
            else:
                self._avg_seconds = 0.7 * self._avg_seconds + 0.3 * seconds
        self.recorder.add(outcome, idle=self.active == 0)
        self._changed.set()

    # --- stopping jobs ---
    async def _watch(self) -> None:
        """Stop jobs past their timeout; give up on jobs that do not stop; give back jobs
        claimed ahead that wait behind long ones."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            self.block.tick()
            now = time.time()
            for attempt in self._running():
                if attempt.stop is None:
                    if attempt.started and now > attempt.started + attempt.timeout:
                        self._stop(attempt, JobTimeout, now)
                elif now > attempt.stop_at + STOP_GRACE_SECONDS:
                    self._give_up(attempt)
            running = self._running()
            if self.active > len(running):  # some wait to start
                late = time.monotonic() - constants.PREFETCH_WAIT_SECONDS
                for attempt in list(self.held.values()):
                    if not attempt.taken and not attempt.ended and attempt.claimed_at < late:
                        self._give_back(attempt)

    def _running(self) -> list[Attempt]:
        return [a for a in (*self.tasks, *(a for _, a in self.lanes.running())) if not a.ended]

    def _stop(self, attempt: Attempt, why: type[Stop], now: float) -> None:
        if attempt.stop is not None and why is not Interrupted:
            return  # told already (an interrupt may follow a timeout or a cancel)
        attempt.stop, attempt.stop_at = why, now
        task = self.tasks.get(attempt)
        if task is not None:
            task.cancel()
        else:
            self.lanes.stop(attempt, why)

    def _give_up(self, attempt: Attempt) -> None:
        assert attempt.stop is not None
        log.error(
            "worker %s: job %s did not stop %.0fs after %s (blocked in C code?): recorded as "
            "%s; this process takes no more jobs and will be replaced",
            self.name,
            attempt.claimed.id,
            STOP_GRACE_SECONDS,
            attempt.stop.reason,
            attempt.stop.reason,
        )
        for lane, running in self.lanes.running():
            if running is attempt:
                lane.abandoned = True
        self._ended(attempt.stopped(attempt.stop))
        if not self.retiring:
            self.retiring = True
            self.block.set_retiring()
        self._wake()

    def _orphaned(self) -> bool:
        return os.getppid() != self._supervisor

    def _interrupt_all(self) -> None:
        now = time.time()
        for attempt in self._running():
            self._stop(attempt, Interrupted, now)

    async def _drain(self) -> None:
        """Put back what has not started; let the rest finish (or, forced, interrupt it)."""
        while self.waiting:
            self._ended(self.waiting.popleft().skipped())
        interrupted = False
        # The supervisor forces a stop after SHUTDOWN_TIMEOUT; without it (killed), this
        # process forces its own a little later, so no drain outlasts the shutdown bound.
        force_at = time.monotonic() + self.settings.shutdown_timeout + constants.FORCE_KILL_GRACE
        while self.active > 0:
            if not self.forced and (self._orphaned() or time.monotonic() > force_at):
                log.warning("worker %s: drain past its bound; interrupting its jobs", self.name)
                self._on_force()
            if self.forced and not interrupted:
                self._interrupt_all()
                interrupted = True
            await self._wait_changed(WAIT_SECONDS)
        self.recorder.soon()
        while not self.recorder.idle:
            await asyncio.sleep(0.005)

    def _recorded(self, outcomes: list[Outcome], fates: list[Fate]) -> None:
        """The recorder's outcomes are in Redis: the jobs are no longer held."""
        self.block.count(*fates)
        with self._held_lock:
            for outcome in outcomes:
                self.held.pop(outcome.claimed.member, None)
        for outcome in outcomes:
            self._cancel.discard(outcome.claimed.id)

    def _held_jobs(self) -> list[Claimed]:
        """For the heartbeat's thread."""
        with self._held_lock:
            return [attempt.claimed for attempt in self.held.values()]

    def _slots_busy(self) -> str:
        return f"{self.block.busy()}/{self.slots}"

    # --- commands ---
    async def _commands(self) -> None:
        """RQ's command channel: `stop-job` cancels a job this process holds."""
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(constants.command_channel(self.name))
                    async for message in pubsub.listen():
                        command = orjson.loads(message["data"])
                        if command.get("command") == "stop-job":
                            self._cancel_job(str(command.get("job_id")))
            except (redis.RedisError, OSError, orjson.JSONDecodeError) as exc:
                log.debug("command channel: %s", exc)
                await asyncio.sleep(1)

    def _cancel_job(self, job_id: str) -> None:
        self._cancel.add(job_id)
        for attempt in self._running():
            if attempt.claimed.id == job_id:
                self._stop(attempt, Canceled, time.time())
