"""One worker process: claim a batch of jobs, run their handlers, record the outcomes.

Round trips per batch, whatever its size: one CLAIM script, one COMPLETE script. When the
queue is empty the process blocks on the queue's wake-up tokens: the job ids never leave the
queue list except inside the CLAIM script, so a crash while waiting can lose nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from types import FrameType
from typing import Any

import orjson
import redis

from service import constants, jobs, scripts
from service.context import JobContext
from service.registry import PayloadInvalid, Registry, UnknownJobType
from service.settings import RedisTarget, Settings
from service.worker import recovery
from service.worker.slots import Slot

log = logging.getLogger("service.worker")


class JobTimeout(BaseException):
    """The job ran past its timeout. A BaseException, so a handler's `except Exception` cannot
    swallow it."""


class Interrupted(BaseException):
    """A forced shutdown stopped the job; it goes back to its queue, not counted as a failure."""


def connect(target: RedisTarget) -> redis.Redis:
    return redis.Redis.from_url(
        target.url,
        socket_timeout=constants.REDIS_SOCKET_TIMEOUT + 1,  # above the longest BLPOP wait
        socket_connect_timeout=constants.REDIS_CONNECT_TIMEOUT,
        health_check_interval=30,
    )


@dataclass(slots=True)
class Claimed:
    id: str
    member: str  # `<id>:<execution id>` in the started registry
    data: bytes
    timeout: float
    attempt: int


class IsolatedJobFailed(Exception):
    """The handler raised in its isolated process; the message is its traceback."""


class IsolatedJobDied(Exception):
    """The isolated process died without reporting (a signal, os._exit, out of memory)."""


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


WAIT_SECONDS = 0.5  # longest block on an empty queue: bounds how late a stop is noticed


class Worker:
    def __init__(
        self, settings: Settings, registry: Registry, slot: Slot, queue: str, name: str
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.slot = slot
        self.queue = queue
        self.name = name
        self.stopping = False
        self._in_handler = False
        self._in_flight: list[str] = []  # started-registry members the heartbeat keeps fresh
        self._lock = threading.Lock()
        self._avg_seconds = constants.BATCH_TARGET_SECONDS  # running mean job time
        self._exec_seq = 0
        self._birth = jobs.utc_iso()
        self._exec_token = uuid.uuid4().hex[:8]

    # --- signals: first SIGTERM finishes the current job, SIGUSR1 interrupts it -------------------
    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _on_force(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self._in_handler:
            raise Interrupted

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._in_handler:
            raise JobTimeout

    # --- main loop ---
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor relays Ctrl-C as SIGTERM
        signal.signal(signal.SIGUSR1, self._on_force)
        signal.signal(signal.SIGALRM, self._on_alarm)
        self.redis = connect(self.settings.queue_redis)
        self.app_redis = connect(self.settings.redis)
        self._claim = self.redis.register_script(scripts.CLAIM)
        self._complete = self.redis.register_script(scripts.COMPLETE)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        log.debug("worker %s started on queue %s", self.name, self.queue)
        backoff = 0.1
        while not self.stopping:
            self.slot.tick()
            try:
                size = self._claim_size()
                batch = self._claim_batch(size)
                if batch:
                    self._run_batch(batch)
                if len(batch) < size:  # the queue ran dry: wait for a token, skip an empty claim
                    self._wait()
                backoff = 0.1
            except redis.RedisError as exc:
                self.slot.set_ready(False)
                log.warning(
                    "worker %s: Redis unavailable (%s); retrying in %.1fs", self.name, exc, backoff
                )
                self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self._deregister()
        return constants.EXIT_OK

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, seconds))

    def _wait(self) -> None:
        """Block until a wake-up token arrives (one job, one woken worker) or WAIT_SECONDS pass.

        Jobs pushed by other tools leave no token: the timeout still finds them.
        """
        self.redis.blpop([constants.wake_key(self.queue)], WAIT_SECONDS)

    def _claim_size(self) -> int:
        """As many jobs as run in about BATCH_TARGET_SECONDS, within 1..WORKER_BATCH_SIZE."""
        fit = int(constants.BATCH_TARGET_SECONDS / max(self._avg_seconds, 1e-6))
        return max(1, min(self.settings.worker_batch_size, fit))

    def _claim_batch(self, size: int) -> list[Claimed]:
        self._exec_seq += 1
        rows = self._claim(
            keys=[constants.queue_key(self.queue), constants.registry_key("started", self.queue)],
            args=[
                size,
                self.name,
                jobs.utc_iso(),
                self._registry_score(),
                f"{self._exec_token}{self._exec_seq:x}x",
            ],
        )
        self.slot.set_ready(True)
        claimed = [
            Claimed(row[0].decode(), row[1].decode(), row[2], float(row[3]), int(row[4]))
            for row in rows
        ]
        with self._lock:
            self._in_flight = [c.member for c in claimed]
        return claimed

    def _registry_score(self) -> int:
        """Started-registry score: the heartbeat keeps it ahead of now while we live."""
        ttl = constants.HEARTBEAT_MISSES * self.settings.worker_processing_interval
        return int(time.time() + ttl) + 1

    def _run_batch(self, batch: list[Claimed]) -> None:
        outcomes: list[Any] = []
        flushed_at = time.monotonic()
        for claimed in batch:
            if self.stopping:
                outcomes += ["interrupt", claimed.id, claimed.member, "", "", ""]
                continue
            outcomes += self._execute(claimed)
            if time.monotonic() - flushed_at >= constants.BATCH_TARGET_SECONDS:
                self._flush(outcomes)
                outcomes, flushed_at = [], time.monotonic()
        self._flush(outcomes)
        with self._lock:
            self._in_flight = []

    def _flush(self, outcomes: list[Any]) -> None:
        if not outcomes:
            return
        now = time.time()
        ok, failed, retried, interrupted = self._complete(
            args=[
                self.name,
                jobs.utc_iso(now),
                int(now),
                constants.RESULT_TTL,
                constants.FAILURE_TTL,
                *outcomes,
            ],
        )
        self.slot.count(finished=ok, failed=failed, retried=retried, interrupted=interrupted)

    # --- one job ---
    def _execute(self, claimed: Claimed) -> list[Any]:
        """Run one job; return its COMPLETE args: outcome, id, member, value, started, ended."""
        started = time.time()
        job_type, timeout = "?", claimed.timeout
        try:
            job_type, payload = jobs.decode_data(claimed.data)
            spec = self.registry.get(job_type)
            timeout = claimed.timeout if claimed.timeout > 0 else spec.timeout
            ctx = JobContext(claimed.id, job_type, self.queue, claimed.attempt, self.app_redis)
            self.slot.busy(timeout, claimed.id)
            call = self._call_isolated if spec.isolated else self._call
            value = call(spec.handler, spec.validate(payload), ctx, timeout)
            outcome, encoded = "ok", (b"" if value is None else jobs.encode_return_value(value))
        except Interrupted:
            outcome, encoded = "interrupt", b""
        except (UnknownJobType, PayloadInvalid) as exc:  # would fail again: no retry
            text = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, PayloadInvalid):
                text += ": " + "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors)
            outcome, encoded = "fail", jobs.encode_exc_string(text)
            self._no_retry(claimed)
        except IsolatedJobFailed as exc:
            outcome, encoded = "fail", jobs.encode_exc_string(str(exc))
        except JobTimeout:
            text = f"JobTimeout: job exceeded its timeout of {timeout:g}s"
            outcome, encoded = "fail", jobs.encode_exc_string(text)
        except Exception:  # noqa: BLE001 - a handler's failure, whatever it is, is the job's outcome
            outcome, encoded = "fail", jobs.encode_exc_string(traceback.format_exc())
        finally:
            self.slot.idle()
        ended = time.time()
        self._avg_seconds = 0.7 * self._avg_seconds + 0.3 * (ended - started)
        level = logging.INFO if outcome != "ok" or ended - started > 1 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "job %s %s: %s in %.3fs (attempt %d)",
                claimed.id,
                job_type,
                outcome,
                ended - started,
                claimed.attempt,
            )
        return [outcome, claimed.id, claimed.member, encoded, repr(started), repr(ended)]

    def _call(self, handler: Any, payload: Any, ctx: JobContext, timeout: float) -> Any:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        self._in_handler = True
        try:
            return handler(payload, ctx)
        finally:
            self._in_handler = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _call_isolated(self, handler: Any, payload: Any, ctx: JobContext, timeout: float) -> Any:
        """Run the handler in a forked child, for job types that leak memory or may crash."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run, report on the pipe, exit without cleanup
            os.close(read_fd)
            for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGALRM):
                signal.signal(signum, signal.SIG_DFL)
            try:
                report = orjson.dumps({"value": handler(payload, ctx)})
            except BaseException:  # noqa: BLE001 - report everything; this process exits next
                report = orjson.dumps({"error": traceback.format_exc()})
            os.write(write_fd, report)
            os._exit(0)
        os.close(write_fd)
        chunks: list[bytes] = []
        try:
            with os.fdopen(read_fd, "rb") as pipe:
                signal.setitimer(signal.ITIMER_REAL, timeout)
                self._in_handler = True
                chunks.append(pipe.read())  # EOF when the child exits, however it exits
        finally:
            self._in_handler = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            if chunks == []:  # interrupted or timed out: stop the child
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        if not chunks[0]:
            raise IsolatedJobDied(f"job process died ({_describe_status(status)})")
        report = orjson.loads(chunks[0])
        if "error" in report:
            raise IsolatedJobFailed(report["error"])
        return report["value"]

    def _no_retry(self, claimed: Claimed) -> None:
        """A job that can never succeed here (unknown type) is failed at once, never retried."""
        self.redis.hset(constants.job_key(claimed.id), "retries_left", 0)

    # --- liveness ---
    def _heartbeat_loop(self) -> None:
        client = connect(self.settings.queue_redis)
        key = constants.worker_key(self.name)
        ttl = int(constants.HEARTBEAT_MISSES * self.settings.worker_processing_interval) + 1
        while True:
            try:
                with self._lock:
                    members = list(self._in_flight)
                with client.pipeline(transaction=False) as pipe:
                    pipe.hset(
                        key,
                        mapping={
                            "birth": self._birth,
                            "last_heartbeat": jobs.utc_iso(),
                            "queues": self.queue,
                            "pid": os.getpid(),
                            "hostname": socket.gethostname(),
                            "state": "busy" if members else "idle",
                        },
                    )
                    pipe.expire(key, ttl)
                    pipe.sadd(constants.WORKERS_KEY, key)
                    pipe.sadd(constants.queue_workers_key(self.queue), key)
                    if members:
                        score = self._registry_score()
                        pipe.zadd(
                            constants.registry_key("started", self.queue),
                            dict.fromkeys(members, score),
                            xx=True,
                        )
                    pipe.execute()
            except redis.RedisError as exc:
                log.debug("heartbeat failed: %s", exc)
            time.sleep(self.settings.worker_processing_interval)

    def _deregister(self) -> None:
        """Put back any job we still hold, then remove our worker registration."""
        key = constants.worker_key(self.name)
        try:
            recovery.recover(self.redis, self.queue, owner=self.name, mode="interrupted")
            with self.redis.pipeline() as pipe:
                pipe.srem(constants.WORKERS_KEY, key)
                pipe.srem(constants.queue_workers_key(self.queue), key)
                pipe.delete(key)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("worker %s: could not deregister: %s", self.name, exc)
