"""One worker process: claim a batch of jobs, run their handlers, record the outcomes.

Round trips per batch, whatever its size: one CLAIM script, one COMPLETE script. When its
queues are empty the process blocks on their wake-up tokens: job ids never leave a queue list
except inside the CLAIM script, so a crash while waiting can lose nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import orjson
import redis

from service import constants, jobs, logs, lua, scripts, tracing
from service import registry as registry_module
from service.context import JobContext
from service.policy import Backoff
from service.registry import PayloadInvalid, Registry, UnknownJobType
from service.settings import Settings
from service.store import connect, out_of_memory
from service.worker import metrics, recovery
from service.worker.isolation import IsolatedJobFailed, run_isolated
from service.worker.slots import Slot, Slots

log = logging.getLogger("service.worker")

WAIT_SECONDS = 0.5  # longest block on empty queues: bounds how late a stop is noticed


def main(settings: Settings, slots: Slots, index: int, name: str, served: list[str]) -> None:
    """Entry point of one worker process, spawned by the supervisor: nothing is inherited, and
    only what running jobs needs is imported here (not the supervisor's modules)."""
    logs.configure(settings, f"worker-{index}")
    tracing.start("service-worker")
    handlers = registry_module.load(settings.handler_modules, import_models=False)
    try:
        code = Worker(settings, handlers, slots[index], served, name).run()
    finally:
        tracing.shutdown()  # export the last spans
    raise SystemExit(code)


class JobTimeout(BaseException):
    """The job ran past its timeout. A BaseException, so a handler's `except Exception` cannot
    swallow it."""


class Interrupted(BaseException):
    """A forced shutdown stopped the job; it goes back to its queue, not counted as a failure."""


class Canceled(BaseException):
    """DELETE /jobs/{id} stopped the job; it ends canceled, never retried."""


@dataclass(slots=True)
class Claimed:
    id: str
    member: str  # `<id>:<execution id>` in the started registry
    data: bytes
    timeout: float
    attempt: int
    queue: str
    backoff: str  # the job's Backoff policy as JSON ('' retries at once)
    enqueued_at: str  # RQ's ISO timestamp of the (re-)enqueue this attempt waited from
    traceparent: str = ""  # the trace context the job carries ('' if published untraced)


@dataclass(slots=True)
class Outcome:
    """One claimed job's end, as the COMPLETE script takes it."""

    claimed: Claimed
    kind: str  # ok | fail | interrupt | cancel | skip (claimed, never started)
    type: str = "unknown"
    value: bytes = b""  # the result (ok), or the error text
    reason: str = ""  # why an attempt failed: exception, timeout, interrupted, canceled
    started: float = 0.0
    ended: float = 0.0
    delay: float = 0.0  # before a retry
    error: str = ""  # the error text, for the log line
    trace_id: str = ""  # the attempt's trace, for the log line ('' with tracing off)

    def args(self) -> list[Any]:
        c = self.claimed
        times = [repr(self.started), repr(self.ended)] if self.started else ["", ""]
        return [self.kind, c.id, c.queue, c.member, self.value, *times, self.delay, self.reason]


class Worker:
    def __init__(
        self, settings: Settings, registry: Registry, slot: Slot, queues: list[str], name: str
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.slot = slot
        self.queues = queues  # drain order: every high queue, then default, then low
        self.name = name
        self.stopping = False
        self._in_handler = False
        self._current = ""  # the job running now
        self._cancel: set[str] = set()  # cancel requests for jobs this process holds
        self._in_flight: list[Claimed] = []  # claimed jobs: the heartbeat keeps them fresh
        self._lock = threading.Lock()
        self._avg_seconds = constants.BATCH_TARGET_SECONDS  # running mean job time
        self._exec_seq = 0
        self._birth = jobs.utc_iso()
        self._exec_token = uuid.uuid4().hex[:8]
        self._retention = settings.retention.args()  # the COMPLETE script's limits
        self.outcome_log = logs.BatchLog(log, settings)

    # --- signals: SIGTERM finishes the current job; SIGUSR1 interrupts it; SIGUSR2 cancels it --
    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _on_force(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self._in_handler:
            raise Interrupted

    def _on_cancel(self, signum: int, frame: FrameType | None) -> None:
        if self._in_handler and self._current in self._cancel:
            raise Canceled

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._in_handler:
            raise JobTimeout

    # --- main loop ---
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor relays Ctrl-C as SIGTERM
        signal.signal(signal.SIGUSR1, self._on_force)
        signal.signal(signal.SIGUSR2, self._on_cancel)
        signal.signal(signal.SIGALRM, self._on_alarm)
        self.redis = connect(self.settings.queue_redis)
        self.app_redis = connect(self.settings.redis)
        self.db = None
        if self.settings.mongodb_uri:  # imported here: pymongo costs a process ~15 MiB
            from service import mongo

            self.db = mongo.connect(self.settings.mongodb_uri)
        metrics.label_types(self.registry.names())
        self._claim = lua.Script(self.redis, scripts.CLAIM)
        self._complete = lua.Script(self.redis, scripts.COMPLETE)
        for target in (self._heartbeat_loop, self._command_loop):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()
        log.debug("worker %s started on %s", self.name, ",".join(self.queues))
        backoff = 0.1
        refused_since: float | None = None  # since when Redis has refused or failed us
        supervisor = os.getppid()
        while not self.stopping:
            self.slot.tick()
            if os.getppid() != supervisor:  # the supervisor died (SIGKILL): do not linger
                log.warning("worker %s: supervisor gone; stopping", self.name)
                break
            try:
                size = self._claim_size()
                batch = self._claim_batch(size)
                if refused_since is not None:
                    waited = time.monotonic() - refused_since
                    log.info("worker %s: claiming again after %.1fs", self.name, waited)
                    refused_since = None
                if batch:
                    self._run_batch(batch)
                if len(batch) < size:  # the queues ran dry: wait for a token, skip an empty claim
                    self._wait()
                backoff = 0.1
            except redis.RedisError as exc:
                self.slot.set_ready(False)
                if refused_since is None:  # one line per episode, not per retry
                    refused_since = time.monotonic()
                    log.warning(
                        "worker %s: %s; not ready, retrying with backoff (up to 5s)",
                        self.name,
                        _trouble(exc),
                    )
                self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self._deregister()
        if self.db is not None:
            self.db.client.close()
        return constants.EXIT_OK

    def _sleep(self, seconds: float) -> None:
        """Back off, still alive: a process waiting for Redis to return is not wedged."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            self.slot.tick()
            time.sleep(min(0.05, seconds))

    def _wait(self) -> None:
        """Block until a wake-up token arrives (one job, one woken worker) or WAIT_SECONDS pass.

        Jobs pushed by other tools leave no token: the timeout still finds them.
        """
        self.redis.blpop([constants.wake_key(q) for q in self.queues], WAIT_SECONDS)

    def _claim_size(self) -> int:
        """As many jobs as run in about BATCH_TARGET_SECONDS, within 1..WORKER_BATCH_SIZE."""
        fit = int(constants.BATCH_TARGET_SECONDS / max(self._avg_seconds, 1e-6))
        return max(1, min(self.settings.worker_batch_size, fit))

    def _claim_batch(self, size: int) -> list[Claimed]:
        self._exec_seq += 1
        prefix = f"{self._exec_token}{self._exec_seq:x}x"
        rows = self._claim(
            args=[size, self.name, jobs.utc_iso(), self._registry_score(), prefix, *self.queues]
        )
        self.slot.set_ready(True)
        claimed = [
            Claimed(
                r[0].decode(),
                r[1].decode(),
                r[2],
                float(r[3]),
                int(r[4]),
                r[5].decode(),
                r[6].decode(),
                r[7].decode(),
                r[8].decode(),
            )
            for r in rows
        ]
        with self._lock:
            self._in_flight = claimed
        return claimed

    def _registry_score(self) -> int:
        """Started-registry score: the heartbeat keeps it ahead of now while we live."""
        ttl = constants.HEARTBEAT_MISSES * self.settings.worker_processing_interval
        return int(time.time() + ttl) + 1

    def _run_batch(self, batch: list[Claimed]) -> None:
        outcomes: list[Outcome] = []
        flushed_at, carried = time.monotonic(), 0
        for claimed in batch:
            if self.stopping:  # claimed but not started: back to the head of its queue
                outcomes.append(Outcome(claimed, "skip"))
            elif claimed.id in self._cancel:
                outcomes.append(Outcome(claimed, "cancel", reason="canceled"))
            elif tracing.enabled():
                outcomes.append(self._execute_traced(claimed))
            else:
                outcomes.append(self._execute(claimed))
            carried += len(outcomes[-1].value)
            # Recorded every BATCH_TARGET_SECONDS, and once they carry MAX_RESULT_BYTES: a
            # COMPLETE that starts just under `maxmemory` passes it by its own writes only.
            if (
                carried >= self.settings.max_result_bytes
                or time.monotonic() - flushed_at >= constants.BATCH_TARGET_SECONDS
            ):
                self._flush(outcomes)
                outcomes, flushed_at, carried = [], time.monotonic(), 0
        self._flush(outcomes)
        with self._lock:
            self._in_flight = []
            self._cancel.clear()

    def _flush(self, outcomes: list[Outcome]) -> None:
        """Record outcomes. Jobs already ran: while Redis is unreachable or full (it refuses
        COMPLETE whole), keep them and keep trying (with backoff) rather than lose the results,
        until a shutdown gives up on them (the jobs then run again elsewhere: at least once).
        The heartbeat still lands on a full Redis, so the held jobs do not look abandoned."""
        if not outcomes:
            return
        backoff = 0.1
        held_since: float | None = None
        args = [value for outcome in outcomes for value in outcome.args()]
        while True:
            now = time.time()
            try:
                results = self._complete(
                    args=[self.name, jobs.utc_iso(now), now, *self._retention, *args]
                )
                break
            except redis.RedisError as exc:
                if self.stopping or not _passing(exc):
                    raise
                if held_since is None:  # one line per episode, not per retry
                    held_since = time.monotonic()
                    self.slot.set_ready(False)
                    log.warning(
                        "worker %s: cannot record %d outcomes yet (%s); keeping them, retrying "
                        "with backoff (up to 5s)",
                        self.name,
                        len(outcomes),
                        _trouble(exc),
                    )
                self.slot.tick()
                self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        if held_since is not None:
            waited = time.monotonic() - held_since
            log.info("worker %s: recorded %d outcomes held %.1fs", self.name, len(outcomes), waited)
        fates = [result.decode() for result in results]
        self.slot.count(*fates)
        for outcome, fate in zip(outcomes, fates, strict=True):
            if fate:
                duration = outcome.ended - outcome.started if outcome.started else None
                metrics.ended(outcome.type, fate, outcome.reason, duration)
                self.outcome_log.add(*_outcome_line(outcome, fate))
        self.outcome_log.flush()

    # --- one job ---
    def _execute_traced(self, claimed: Claimed) -> Outcome:
        """`_execute` inside the attempt's span, a child of the context the job carries; the
        outcome keeps the trace id for its log line, written once the batch is recorded."""
        with tracing.job_span(
            claimed.traceparent, claimed.id, claimed.queue, claimed.attempt
        ) as span:
            outcome = self._execute(claimed)
            tracing.set_outcome(span, outcome.type, outcome.kind, outcome.reason, outcome.error)
            outcome.trace_id = tracing.current_trace_id()
        return outcome

    def _execute(self, claimed: Claimed) -> Outcome:
        """Run one job; return its outcome."""
        started = time.time()
        job_type, timeout = "unknown", claimed.timeout
        outcome, error, reason = "fail", "", "exception"
        value = b""
        try:
            name, payload = jobs.decode_data(claimed.data)
            metrics.started(name, claimed.enqueued_at, started)  # `unknown` unless registered
            spec = self.registry.get(name)
            job_type = spec.name  # registered: the outcome's log line, span and metrics name it
            timeout = claimed.timeout if claimed.timeout > 0 else spec.timeout
            ctx = JobContext(
                claimed.id,
                job_type,
                claimed.queue,
                claimed.attempt,
                self.app_redis,
                queue_redis=self.redis,
                database=self.db,
            )
            arguments = spec.validate(payload)
            self._current = claimed.id
            self.slot.busy(timeout, claimed.id)
            limit = self.settings.max_result_bytes
            if spec.isolated:
                encoded = run_isolated(
                    spec.handler, arguments, ctx, lambda: self._guard(timeout), limit
                )
            else:
                with self._guard(timeout):
                    result = spec.handler(arguments, ctx)
                encoded = jobs.result_json(result, limit)
            value = jobs.encode_return_value(encoded)
            outcome = "ok"
        except jobs.ResultRejected as exc:  # not JSON, or too large: a failed attempt
            error, reason = str(exc), exc.reason
        except Interrupted:
            outcome, reason = "interrupt", "interrupted"
        except Canceled:
            outcome, reason = "cancel", "canceled"
        except (UnknownJobType, PayloadInvalid) as exc:  # would fail again: no retry
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, PayloadInvalid):
                error += ": " + "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors)
            self._no_retry(claimed)
        except IsolatedJobFailed as exc:
            error = str(exc)
        except JobTimeout:
            error = f"JobTimeout: job exceeded its timeout of {timeout:g}s"
            reason = "timeout"
        except Exception:  # noqa: BLE001 - a handler's failure, whatever it is, is the job's outcome
            error = traceback.format_exc()
        finally:
            self._current = ""
            self.slot.idle()
        ended = time.time()
        self._avg_seconds = 0.7 * self._avg_seconds + 0.3 * (ended - started)
        delay = self._retry_delay(claimed) if outcome == "fail" else 0
        if outcome == "ok":
            reason = ""
        elif error:
            value = jobs.encode_exc_string(error)
        return Outcome(claimed, outcome, job_type, value, reason, started, ended, delay, error)

    @contextlib.contextmanager
    def _guard(self, timeout: float) -> Iterator[None]:
        """While inside: the job's timeout runs, and signals may interrupt or cancel it."""
        signal.setitimer(signal.ITIMER_REAL, timeout)
        self._in_handler = True
        try:
            if self._current in self._cancel:  # canceled just before it started
                raise Canceled
            yield
        finally:
            self._in_handler = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    @staticmethod
    def _retry_delay(claimed: Claimed) -> float:
        if not claimed.backoff:
            return 0.0
        return Backoff.from_json(claimed.backoff).delay(claimed.attempt)

    def _no_retry(self, claimed: Claimed) -> None:
        """A job that can never succeed here (unknown type) is failed at once, never retried.
        If Redis cannot take that now, it is retried by its policy and fails again."""
        try:
            self.redis.hset(constants.job_key(claimed.id), "retries_left", 0)
        except redis.RedisError as exc:
            log.debug("job %s: retries left unchanged: %s", claimed.id, exc)

    # --- background threads: liveness and commands ---
    def _heartbeat_loop(self) -> None:
        client = connect(self.settings.queue_redis)
        heartbeat = lua.Script(client, scripts.HEARTBEAT)
        key = constants.worker_key(self.name)
        ttl = int(constants.HEARTBEAT_MISSES * self.settings.worker_processing_interval) + 1
        while True:
            with self._lock:
                held = list(self._in_flight)
            registration = {
                "birth": self._birth,
                "last_heartbeat": jobs.utc_iso(),
                "queues": ",".join(self.queues),
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "state": "busy" if held else "idle",
            }
            args: list[Any] = [key, ttl, self._registry_score()]
            args += [*itertools.chain(*registration.items()), "--", *self.queues, "--"]
            args += [*itertools.chain(*((c.queue, c.member) for c in held))]
            try:
                heartbeat(args=args)
            except redis.RedisError as exc:
                log.debug("heartbeat failed: %s", exc)
            time.sleep(self.settings.worker_processing_interval)

    def _command_loop(self) -> None:
        """RQ's command channel: `stop-job` cancels a job this process holds."""
        while True:
            try:
                client = connect(self.settings.queue_redis)
                # redis-py 8.1 leaves pubsub() untyped, 8.2 listen(): either may be flagged.
                pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
                pubsub.subscribe(constants.command_channel(self.name))
                for message in pubsub.listen():  # type: ignore[no-untyped-call,unused-ignore]
                    command = orjson.loads(message["data"])
                    if command.get("command") == "stop-job":
                        self._cancel.add(str(command.get("job_id")))
                        if command.get("job_id") == self._current:
                            os.kill(os.getpid(), signal.SIGUSR2)
            except (redis.RedisError, orjson.JSONDecodeError) as exc:
                log.debug("command channel: %s", exc)
                time.sleep(1)

    def _deregister(self) -> None:
        """Put back any job we still hold, then remove our worker registration."""
        key = constants.worker_key(self.name)
        try:
            recovery.recover(
                self.redis,
                self.queues,
                max_crashes=self.settings.max_crashes,
                retention=self.settings.retention,
                owner=self.name,
                mode="interrupted",
            )
            with self.redis.pipeline() as pipe:
                pipe.srem(constants.WORKERS_KEY, key)
                for queue in self.queues:
                    pipe.srem(constants.queue_workers_key(queue), key)
                pipe.delete(key)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("worker %s: could not deregister: %s", self.name, exc)


def _passing(exc: redis.RedisError) -> bool:
    """Trouble that passes by itself: Redis unreachable, stalled or full."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) or out_of_memory(exc)


def _trouble(exc: redis.RedisError) -> str:
    if out_of_memory(exc):
        return "Redis is full (used memory > maxmemory)"
    return f"Redis unavailable ({exc})"


_LEVELS = {
    "finished": logging.INFO,
    "canceled": logging.INFO,
    "interrupted": logging.INFO,
    "retried": logging.WARNING,
    "failed": logging.ERROR,
}


def _outcome_line(outcome: Outcome, fate: str) -> tuple[int, str, dict[str, Any]]:
    """One line per job outcome: id, type, attempt, duration and what happens next; of the
    error only its last line (payloads and tracebacks can carry secrets; the job keeps them)."""
    claimed = outcome.claimed
    duration = outcome.ended - outcome.started if outcome.started else 0.0
    detail = ""
    if fate in ("retried", "failed"):
        detail = f" ({outcome.reason}: {_last_line(outcome.error)})"
        detail += "; will retry" if fate == "retried" else "; dead-lettered"
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


def _last_line(text: str, limit: int = 200) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "no error text"
    return last if len(last) <= limit else last[: limit - 1] + "…"
