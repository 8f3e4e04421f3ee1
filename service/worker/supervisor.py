"""The worker container's main process: starts WORKER_PROCESSES worker processes (each runs
up to WORKER_CONCURRENCY jobs at once), restarts one that dies (re-queuing its jobs at once,
blaming only the ones it was running), runs housekeeping, serves /health and /ready, and shuts
everything down in bounded time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

import redis

from service.config import constants, queues
from service.config.settings import Settings
from service.jobs.registry import Registry
from service.jobs.states import Fate
from service.net.connections import fit_file_limit
from service.store import durability, housekeeping
from service.store import limits as limit_store
from service.store.connection import connect
from service.telemetry import gauges as backlog_metrics
from service.worker import job_metrics
from service.worker.health import HealthServer
from service.worker.process import main as process_main
from service.worker.scheduler import Scheduler
from service.worker.slots import READY, RETIRING, TICK, Slots

if TYPE_CHECKING:  # imported where used: pymongo is megabytes, needed only with MONGODB_URI
    from pymongo.database import Database

    from service.history.shipper import Shipper

log = logging.getLogger("service.worker")
_spawn = multiprocessing.get_context("spawn")


def served_queues(settings: Settings, registry: Registry) -> list[str]:
    """WORKER_QUEUES, else QUEUE_NAME and every queue a job type names; three priorities each."""
    return queues.served(settings.worker_queues or registry.queues(settings.queue_name))


class Supervisor:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.queues = served_queues(settings, registry)
        self.job_types = registry.names()  # the only names a `type` label may take
        count = settings.worker_processes
        self.slots = Slots(count, settings.worker_concurrency)
        self.processes: list[BaseProcess | None] = [None] * count
        self.names = [""] * count
        self.prefix = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:4]}"
        self.restarts = [0] * count
        self.signals = 0
        self.stopping = False  # set once the worker processes have been told to stop
        self.lost_jobs = 0
        self._redis_since: float | None = None  # since when housekeeping has reached Redis
        self.db: Database[dict[str, Any]] | None = None
        self.shipper: Shipper | None = None
        self.history: threading.Thread | None = None  # the shipper's thread
        self._history_stop = threading.Event()
        self.registry = registry
        self._limits_declared = False
        self.scheduler = Scheduler(settings, registry)
        self._scheduler_stop = threading.Event()
        self.backlog = backlog_metrics.BacklogCollector()
        self._backlog_plan = backlog_metrics.BacklogPlan({queues.base(q) for q in self.queues})
        # A signal writes a byte here, so the main loop wakes at once instead of at its timeout.
        self._wakeup_read, self._wakeup_write = socket.socketpair()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1

    def run(self) -> int:
        connections = self.settings.max_connections  # the health server's
        why = f"1 per connection, {constants.FILES_RESERVE} for the process"
        if problem := fit_file_limit(connections, connections + constants.FILES_RESERVE, why):
            log.error("invalid configuration: %s", problem)
            return constants.EXIT_CONFIG
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._wakeup_write.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_write.fileno(), warn_on_full_buffer=False)
        self.redis = connect(self.settings.queue_redis)
        strict = self.settings.durability == "strict"
        refused = durability.problems_at_start(self.redis, strict)
        if refused:  # before the health server binds its port
            log.error("refusing to start (DURABILITY=strict): %s", "; ".join(refused))
            return constants.EXIT_CONFIG
        job_metrics.label_types(self.job_types)  # recovery counts the jobs of dead workers
        exposed = job_metrics.registry(
            job_metrics.SupervisorCollector(self.live_figures),
            self.backlog,
            job_metrics.HistoryCollector(self.history_figures),
        )
        health = HealthServer(
            self.settings, self.healthy, self.ready, lambda: backlog_metrics.exposition(exposed)
        )
        health.start()
        log.info(
            "worker supervisor: %d processes x %d jobs at once, on queues %s, Redis %s, "
            "health on :%d",
            self.settings.worker_processes,
            self.settings.worker_concurrency,
            ",".join(self.queues),
            self.settings.queue_redis,
            health.port,
        )
        for index in range(self.settings.worker_processes):
            self._start(index)
        self.history = self._start_history()
        # Schedules fire from a thread of their own: a slow round of housekeeping (or a
        # restart backoff) in the main loop never delays a fire.
        scheduler = threading.Thread(
            target=self.scheduler.run, args=(self._scheduler_stop,), name="scheduler", daemon=True
        )
        scheduler.start()
        try:
            self._supervise()
            self._scheduler_stop.set()  # a container shutting down fires nothing more
            code = self._shut_down()
        finally:
            self._scheduler_stop.set()
            scheduler.join(constants.REDIS_SOCKET_TIMEOUT + constants.SCHEDULE_TICK_SECONDS)
            if self.history is not None:  # after the workers: their last events ship too
                self._history_stop.set()
                self.history.join(constants.HISTORY_DRAIN_SECONDS + 2)
            if self.db is not None:
                self.db.client.close()
            health.stop()
        totals = self.slots.totals()
        log.info(
            "worker stopped: %d finished, %d failed, %d retried, %d canceled, "
            "%d interrupted and re-queued, %d re-queued from lost processes, exit %d",
            totals[Fate.FINISHED],
            totals[Fate.FAILED],
            totals[Fate.RETRIED],
            totals[Fate.CANCELED],
            totals[Fate.INTERRUPTED],
            self.lost_jobs,
            code,
        )
        return code

    def _start_history(self) -> threading.Thread | None:
        """With MONGODB_URI: indexes (idempotent), then the history shipper's thread."""
        if self.settings.mongodb_uri is None:
            return None
        from pymongo.errors import PyMongoError

        from service.history import mongo
        from service.history.shipper import Shipper

        self.db = mongo.connect(self.settings.mongodb_uri)
        try:
            mongo.ensure_indexes(self.db, self.settings.history_ttl_days)
        except PyMongoError as exc:  # not fatal: history waits in Redis until MongoDB is back
            log.warning("MongoDB unavailable at start (%s); job history will catch up", exc)
        self.shipper = Shipper(
            connect(self.settings.queue_redis),
            self.db,
            self.prefix,
            self.settings.worker_batch_size,
            self.settings.worker_processing_interval,
        )
        thread = threading.Thread(
            target=self.shipper.run, args=(self._history_stop,), name="history", daemon=True
        )
        thread.start()
        return thread

    def _start(self, index: int) -> None:
        self.slots[index].reset()
        self.names[index] = f"{self.prefix}.{index}.{self.restarts[index]}"
        process = _spawn.Process(
            target=process_main,
            args=(self.settings, self.slots, index, self.names[index], self.queues),
            name=f"worker-{index}",
            daemon=True,
        )
        process.start()
        self.processes[index] = process

    def _supervise(self) -> None:
        next_housekeeping = time.monotonic()
        while not self.signals:
            waitables: list[int | socket.socket] = [self._wakeup_read]
            waitables += [p.sentinel for p in self.processes if p is not None]
            timeout = min(1.0, max(0.0, next_housekeeping - time.monotonic()))
            if self._wakeup_read in wait(waitables, timeout=timeout):
                self._wakeup_read.recv(64)
            for index, process in enumerate(self.processes):
                if process is not None and not process.is_alive() and not self.signals:
                    self._replace(index, process)
            if time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + self._housekeeping()

    def _housekeeping(self) -> float:
        """Promote due scheduled jobs and recover jobs of dead containers; return the seconds
        until the next round: WORKER_PROCESSING_INTERVAL, or sooner if a job falls due."""
        interval = self.settings.worker_processing_interval
        self._refresh_backlog(interval)
        try:
            if not self._limits_declared:  # the code's limits, for every claim (once reached)
                limit_store.declare(self.redis, self.registry)
                self._limits_declared = True
            next_due = housekeeping.promote(self.redis, self.queues).next_due
        except redis.RedisError as exc:
            self._redis_since = None
            log.warning("housekeeping skipped, Redis unavailable: %s", exc)
            return interval
        now = time.monotonic()
        if self._redis_since is None:
            self._redis_since = now
        # While Redis is out of reach, every worker's heartbeat stops: an expired entry means
        # its worker is gone only once live workers have had time to beat again (one blocked
        # call, then one interval), or a stall would re-deliver jobs that are still running.
        settle = constants.HEARTBEAT_MISSES * interval + constants.WORKER_SOCKET_TIMEOUT
        if now - self._redis_since >= settle:
            self._recover()
        if next_due is None:
            return interval
        return min(interval, max(constants.MIN_PROMOTE_WAIT, next_due - time.time()))

    def _refresh_backlog(self, interval: float) -> None:
        """The backlog gauges, at most once per interval (housekeeping may run more often)."""
        if not self.backlog.stale(interval * 0.9):
            return
        try:
            self.backlog.latest = backlog_metrics.read_backlog(self.redis, self._backlog_plan)
        except redis.RedisError as exc:
            self.backlog.latest = None  # no figures rather than stale ones
            log.debug("backlog figures skipped, Redis unavailable: %s", exc)

    def history_figures(self) -> tuple[bool, int, int] | None:
        """(shipper running, events stored in part, events not stored), None without one."""
        if self.shipper is None:
            return None
        stats = self.shipper.stats
        return self._shipping(), stats.stored_in_part, stats.unstorable

    def _shipping(self) -> bool:
        return self.history is not None and self.history.is_alive()

    def live_figures(self) -> tuple[int, int, int, int]:
        """(processes alive, slots busy, slots in all, restarts so far): read at scrape time."""
        alive = [i for i, p in enumerate(self.processes) if p is not None and p.is_alive()]
        busy = sum(self.slots[i].busy() for i in alive)
        return len(alive), busy, len(alive) * self.settings.worker_concurrency, sum(self.restarts)

    def _replace(self, index: int, child: BaseProcess) -> None:
        """A worker process ended: re-queue its jobs now, then start another (after a
        backoff if it died; at once if it retired because a job would not stop)."""
        block = self.slots[index]
        if child.exitcode == constants.EXIT_RETIRED:
            log.warning(
                "worker process %s (pid %s) retired (a job did not stop when told to); "
                "replacing it",
                child.name,
                child.pid,
            )
            self._recover(self.names[index], "interrupted")
            self._start(index)
            return
        self.restarts[index] += 1
        log.error(
            "worker process %s (pid %s) died with exit code %s; restarting",
            child.name,
            child.pid,
            child.exitcode,
        )
        self._recover(self.names[index], "lost", block.running_ids())
        delay = min(constants.RESTART_BACKOFF_MAX, 0.1 * 2 ** min(self.restarts[index] - 1, 7))
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self.signals:
            time.sleep(0.05)
        if not self.signals:
            self._start(index)

    def _recover(
        self,
        name: str = "",
        mode: Literal["lost", "interrupted"] = "lost",
        running: Sequence[str] = (),
    ) -> None:
        """Put back the jobs a dead worker process held (name), or those of any worker whose
        heartbeat expired (no name: its whole container died), and prune dead registrations."""
        try:
            recovered = housekeeping.recover(
                self.redis,
                self.queues,
                max_crashes=self.settings.max_crashes,
                retention=self.settings.retention,
                owner=name,
                mode=mode,
                running=running,
            )
            for blamed in recovered.blamed:
                job_metrics.ended(blamed.type, blamed.fate, "worker_lost", None)
            for queue in self.queues:
                housekeeping.prune_workers(self.redis, queue)
            if name:
                self.redis.delete(constants.worker_key(name))
        except redis.RedisError as exc:
            log.warning("recovery skipped, Redis unavailable: %s", exc)
            return
        failed, redelivered = recovered.failed, recovered.redelivered
        interrupted = recovered.interrupted
        self.lost_jobs += redelivered + interrupted
        if failed or redelivered or interrupted:
            log.warning(
                "jobs of lost worker %s: %d re-delivered, %d never started and re-queued, "
                "%d failed after %d crashes",
                name or "(heartbeat expired)",
                redelivered,
                interrupted,
                failed,
                self.settings.max_crashes,
            )

    def _shut_down(self) -> int:
        """Stop taking jobs; let running ones finish within SHUTDOWN_TIMEOUT; then interrupt.

        Interrupted jobs go back to the head of their queue. A second signal interrupts at once.
        """
        alive = [p for p in self.processes if p is not None and p.is_alive()]
        for process in alive:
            _signal(process, signal.SIGTERM)
        self.stopping = True
        graceful_until = time.monotonic() + self.settings.shutdown_timeout
        forced = False
        if not _wait_exit(alive, lambda: time.monotonic() >= graceful_until or self.signals > 1):
            forced = self.signals > 1
            log.warning(
                "shutdown: interrupting running jobs (%s)",
                "second signal" if forced else "SHUTDOWN_TIMEOUT passed",
            )
            for process in alive:
                _signal(process, signal.SIGUSR1)
            kill_at = time.monotonic() + constants.FORCE_KILL_GRACE
            if not _wait_exit(alive, lambda: time.monotonic() >= kill_at):
                for process in alive:
                    _signal(process, signal.SIGKILL)
        for index, child in enumerate(self.processes):
            if child is not None:
                child.join(1)
                if child.exitcode == -signal.SIGKILL:  # it died holding jobs: put them back
                    self._recover(self.names[index], "interrupted")
        return constants.EXIT_FORCED if forced else constants.EXIT_OK

    # --- health ---
    def healthy(self) -> tuple[bool, dict[str, object]]:
        """Alive: every worker process is running and none is wedged (its event loop silent).

        A process that retires (a job would not stop) is still healthy: it is replaced."""
        now = time.monotonic()
        # A loop waiting on a stalled Redis is silent for one socket timeout, not wedged.
        stale_after = max(
            constants.HEARTBEAT_MISSES * self.settings.worker_processing_interval,
            2 * constants.WORKER_SOCKET_TIMEOUT,
        )
        alive = wedged = busy = 0
        for index, child in enumerate(self.processes):
            if child is None or not child.is_alive():
                continue
            alive += 1
            block = self.slots[index]
            busy += block.busy()
            if not block.get(RETIRING):
                wedged += now - block.get(TICK) > stale_after
        ok = alive == len(self.processes) and not wedged and not self.stopping
        slots = {"busy": busy, "total": len(self.processes) * self.settings.worker_concurrency}
        details: dict[str, object] = {
            "processes": len(self.processes),
            "alive": alive,
            "wedged": wedged,
            "slots": slots,
        }
        return ok, details

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Ready: Redis (and MongoDB and the history shipper, when configured) answer, and
        the processes consume."""
        consuming = sum(self.slots[i].get(READY) > 0 for i in range(len(self.processes)))
        try:
            redis_ok = bool(self.redis.ping())
        except redis.RedisError:
            redis_ok = False
        details: dict[str, object] = {
            "redis": "ok" if redis_ok else "unavailable",
            "consuming": consuming,
        }
        mongo_ok = shipping = True
        if self.db is not None and self.shipper is not None:
            from service.history import mongo

            mongo_ok = mongo.ping(self.db)
            shipping = self._shipping()
            details["mongodb"] = "ok" if mongo_ok else "unavailable"
            details["history"] = "ok" if shipping else "stopped"
            details["shipper"] = dataclasses.asdict(self.shipper.stats)
        ok = redis_ok and mongo_ok and shipping and consuming > 0 and not self.stopping
        return ok, details


def _signal(process: BaseProcess, signum: int) -> None:
    if process.pid is not None and process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


def _wait_exit(processes: list[BaseProcess], give_up: Callable[[], bool]) -> bool:
    """Wait until every process has exited (True) or `give_up()` turns true (False)."""
    while any(p.is_alive() for p in processes):
        if give_up():
            return False
        wait([p.sentinel for p in processes if p.is_alive()], timeout=0.1)
    return True


def run(settings: Settings, registry: Registry) -> int:
    return Supervisor(settings, registry).run()
