"""The state of one benchmark run: the private Redis, the children, and the figures so far.

Each phase module gets a `Bench` and adds rows to it; `report.py` turns them into the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from benchmarks.common import (
    DB_APP,
    DB_SERVICE,
    QUEUE,
    ROOT,
    Child,
    Processes,
    baseline_argv,
    http_get,
    parse_rq_time,
    wait_until,
)
from benchmarks.redis_meter import RedisCost, RedisMeter
from service.config import constants, cpus
from service.dev.embedded_redis import EmbeddedRedis, free_port
from service.dev.runner import DEMO_MODULE
from service.jobs import records
from service.jobs import registry as service_registry
from service.store.publisher import Store

QUEUE_KEY = constants.queue_key(QUEUE)
FINISHED_KEY = constants.registry_key("finished", QUEUE)
FAILED_KEY = constants.registry_key("failed", QUEUE)
PUBLISH_CHUNK = 1000  # jobs per PUBLISH script call when pre-loading
# The job types the benchmarks run, as HANDLER_MODULES: the demo types (noop) and bench.*.
HANDLERS = f"{DEMO_MODULE},benchmarks.demo_handlers"
DEFAULTS = "service, defaults"  # the label of the service's worker at its defaults


def defaults_system() -> str:
    """The side-by-side table's name for the worker at its defaults, with what they are here."""
    return f"{DEFAULTS} ({cpus.available()} processes x 5)"


@dataclass
class Row:
    figure: str
    service: str
    baseline: str
    ratio: str


@dataclass
class SystemFigures:
    """One line of the side-by-side table: a queue system measured in this run."""

    drain: float | None = None  # jobs/s
    drain_jobs: int = 0
    enqueue: float | None = None  # jobs/s, one at a time from one client
    bulk: float | None = None  # jobs/s
    bulk_how: str = ""
    p50_ms: float | None = None  # enqueue → start at the latency rate
    p99_ms: float | None = None
    redis_us: float | None = None  # Redis CPU per job in the drain
    redis_commands: float | None = None
    rss_mib: float | None = None  # per worker process, after the drain
    note: str = ""


@dataclass
class Bench:
    args: argparse.Namespace
    work_dir: Path
    server: EmbeddedRedis = field(default_factory=EmbeddedRedis)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)  # extra Markdown after the main table
    costs: dict[str, RedisCost] = field(default_factory=dict)  # Redis CPU per job, by run
    systems: dict[str, SystemFigures] = field(default_factory=dict)
    generator: str = "python"
    generator_note: str = ""
    load_at_start: str = ""  # the machine's load average when the run began
    service_env: dict[str, str] = field(default_factory=dict)  # extra settings for the service

    def __post_init__(self) -> None:
        self.procs = Processes(self.work_dir)
        self._clients: dict[int, redis.Redis] = {}
        self._registry = service_registry.load(tuple(HANDLERS.split(",")))

    def system(self, name: str) -> SystemFigures:
        return self.systems.setdefault(name, SystemFigures())

    # --- Redis ---
    def db(self, number: int) -> redis.Redis:
        if number not in self._clients:
            self._clients[number] = redis.Redis(port=self.server.port, db=number)
        return self._clients[number]

    def url(self, number: int) -> str:
        return f"{self.server.url}/{number}"

    def redis_meter(self) -> RedisMeter:
        return RedisMeter(self.db(DB_APP))

    @contextlib.contextmanager
    def using_redis(self, other: EmbeddedRedis) -> Iterator[None]:
        """Point every helper at another (started) redis-server for the duration."""
        saved, saved_clients = self.server, self._clients
        self.server, self._clients = other, {}
        try:
            yield
        finally:
            for client in self._clients.values():
                client.close()
            self.server, self._clients = saved, saved_clients

    def close(self) -> None:
        self.procs.stop_all()
        for client in self._clients.values():
            client.close()
        self.server.stop()

    # --- processes ---
    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: nothing from the caller's shell but PATH."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "REDIS_URL": self.url(DB_APP),
            "QUEUE_REDIS_URL": self.url(DB_SERVICE),
            "HOST": "127.0.0.1",
            "HANDLER_MODULES": HANDLERS,
            **self.service_env,
            **extra,
        }

    def start_api(self) -> tuple[Child, str]:
        port = free_port()
        child = self.procs.start("api", [sys.executable, "-m", "service"], self.env(PORT=str(port)))
        base = f"http://127.0.0.1:{port}"
        self.wait_http(child, f"{base}/health", lambda status, _: status == 200)
        return child, base

    def start_worker(
        self, processes: int | None = None, concurrency: int = 5, **extra: str
    ) -> Child:
        """A worker container: `processes` worker processes (None: the default, the CPUs this
        machine lets it use), each running up to `concurrency` jobs at once."""
        port = free_port()
        env = self.env(
            WORKER_MODE="true",
            PORT=str(port),
            WORKER_CONCURRENCY=str(concurrency),
            WORKER_PROCESSES="" if processes is None else str(processes),
            **extra,
        )
        wanted = processes or cpus.available()
        child = self.procs.start("worker", [sys.executable, "-m", "service"], env)
        # /ready counts the processes that have made a first claim: all of them, or we wait.
        self.wait_http(
            child,
            f"http://127.0.0.1:{port}/ready",
            lambda status, body: status == 200 and body.get("consuming") == wanted,
        )
        return child

    def start_baseline_server(self, kind: str, db: int) -> tuple[Child, str]:
        port = free_port()
        argv = baseline_argv(f"serve-{kind}", port, self.url(db))
        child = self.procs.start(f"serve-{kind}", argv, self.env())
        base = f"http://127.0.0.1:{port}"
        self.wait_http(child, f"{base}/health", lambda status, _: status == 200)
        return child, base

    def wait_http(self, child: Child, url: str, ok: Callable[[int, Any], bool]) -> None:
        def check() -> bool:
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with {child.process.returncode}:\n{child.tail()}"
                )
            try:
                return ok(*http_get(url))
            except (OSError, ValueError):
                return False

        wait_until(check, 30.0, f"{child.name} at {url}")

    # --- jobs ---
    def noop_job(self) -> records.NewJob:
        return self.new_job("noop")

    def new_job(self, job_type: str) -> records.NewJob:
        """A job of a built-in type or of benchmarks/demo_handlers.py, with an empty payload."""
        spec = self._registry.get(job_type)
        return records.NewJob(records.new_id(), job_type, QUEUE, {}, spec.timeout, spec.max_retries)

    def publish_noops(self, n: int, job_type: str = "noop") -> list[str]:
        """Pre-load `n` jobs (no-op unless `job_type` says otherwise) with the service's own
        Store (PUBLISH script, 1,000 a call)."""
        return asyncio.run(self._publish(n, job_type))

    async def _publish(self, n: int, job_type: str) -> list[str]:
        client = aioredis.Redis(port=self.server.port, db=DB_SERVICE)
        store = Store(client)
        ids: list[str] = []
        try:
            for start in range(0, n, PUBLISH_CHUNK):
                chunk = [self.new_job(job_type) for _ in range(min(PUBLISH_CHUNK, n - start))]
                await store.publish(chunk)
                ids += [job.id for job in chunk]
        finally:
            await client.aclose()
        return ids

    def wait_finished(
        self, client: redis.Redis, count: int, timeout: float, poll: float = 0.05
    ) -> tuple[int, int]:
        """Poll the finished and failed registries until `count` jobs are in them."""
        state = ""

        def done() -> tuple[int, int] | None:
            nonlocal state
            with client.pipeline(transaction=False) as pipe:
                pipe.zcard(FINISHED_KEY)
                pipe.zcard(FAILED_KEY)
                pipe.llen(QUEUE_KEY)
                finished, failed, waiting = pipe.execute()
            state = f"{finished} finished, {failed} failed, {waiting} waiting"
            return (finished, failed) if finished + failed >= count else None

        try:
            result: tuple[int, int] = wait_until(done, timeout, f"{count} jobs finished", poll)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} ({state})") from None
        return result

    def job_times(
        self, client: redis.Redis, ids: Sequence[str], names: Sequence[str]
    ) -> list[list[float | None]]:
        """The named timestamp fields of each job hash, as epoch seconds."""
        rows: list[list[float | None]] = []
        for start in range(0, len(ids), 5000):
            with client.pipeline(transaction=False) as pipe:
                for job_id in ids[start : start + 5000]:
                    pipe.hmget(constants.job_key(job_id), list(names))
                rows += [[parse_rq_time(v) for v in values] for values in pipe.execute()]
        return rows

    def drain_span(self, client: redis.Redis, ids: Sequence[str]) -> float:
        """Seconds from the first job's started_at to the last job's ended_at."""
        times = self.job_times(client, ids, ("started_at", "ended_at"))
        starts = [t[0] for t in times if t[0] is not None]
        ends = [t[1] for t in times if t[1] is not None]
        if len(starts) != len(ids) or len(ends) != len(ids):
            raise RuntimeError(f"{len(ids) - len(ends)} jobs have no started_at or ended_at")
        return max(ends) - min(starts)
