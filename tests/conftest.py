"""Fixtures: a real redis-server started by the suite, and the service run as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pymongo
import pytest
import redis
import redis.asyncio

from service.dev.embedded_mongo import EmbeddedMongo
from service.dev.embedded_redis import EmbeddedRedis, free_port

if TYPE_CHECKING:
    from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server of our own on a free loopback port (or TEST_REDIS_URL, if set)."""
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"].rstrip("/")
        return
    server = EmbeddedRedis().start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The test's Redis, emptied first: queue in db 1, application data in db 0."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
def queue_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_url}/1")
    yield client
    client.close()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until `condition()` is truthy; fail the test with a clear message past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], Any]:
    """A tiny JSON HTTP client (the processes under test are real servers)."""
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), orjson.loads(exc.read() or b"null")


# The job types every test may use: the demo types dev mode registers, and the tests' own.
TEST_MODULES = ("service.dev.demo", "tests.sample_handlers")
TEST_HANDLERS = ",".join(TEST_MODULES)


def make_client(redis_url: str, **env: str) -> TestClient:
    """The API in-process (Starlette's TestClient) on the test's Redis, with the test job types."""
    from starlette.testclient import TestClient

    from service.api.app import create_app
    from service.config.settings import load
    from service.jobs import registry

    settings = load({"QUEUE_REDIS_URL": f"{redis_url}/1", "REDIS_URL": f"{redis_url}/0", **env})
    return TestClient(
        create_app(settings, registry.load(TEST_MODULES)), raise_server_exceptions=False
    )


def env_file(name: str) -> dict[str, str]:
    """The variables an env/ file sets (comments and blank lines skipped)."""
    lines = (ROOT / "env" / name).read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def base_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """A clean environment: nothing leaks in from the developer's shell."""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": f"{redis_url}/0",
        "QUEUE_REDIS_URL": f"{redis_url}/1",
        "LOG_LEVEL": "INFO",
        "HANDLER_MODULES": TEST_HANDLERS,
        "HOST": "127.0.0.1",
        "WORKER_PROCESSES": "1",  # one unless a test asks for more (the default: the CPUs)
    }
    env.update(overrides)
    return env


class ServiceProcess:
    """`python -m service` as a real process, with its output kept for failure reports."""

    def __init__(
        self,
        env: dict[str, str],
        args: tuple[str, ...] = (),
        log: Path | None = None,
        preexec_fn: Callable[[], object] | None = None,  # run in the child before it starts
    ):
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        # Its own process group, so a forced stop can take its worker processes with it.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def wait_healthy(self, timeout: float = 20.0) -> ServiceProcess:
        def healthy() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"process exited with {self.process.returncode}:\n{self.output}")
            try:
                return http("GET", f"{self.url}/health", timeout=1)[0] == 200
            except OSError:
                return False

        wait_for(healthy, timeout, 0.05)
        return self

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()


@pytest.fixture
def start_service(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start `python -m service` (API or worker) against the test's Redis; stopped afterwards."""
    started: list[ServiceProcess] = []

    def start(
        worker: bool = False,
        wait: bool = True,
        preexec_fn: Callable[[], object] | None = None,
        **env: str,
    ) -> ServiceProcess:
        settings = base_env(
            redis_url, WORKER_MODE="true" if worker else "false", PORT=str(free_port()), **env
        )
        name = f"{'worker' if worker else 'api'}-{len(started)}.log"
        process = ServiceProcess(settings, log=tmp_path / name, preexec_fn=preexec_fn)
        started.append(process)
        return process.wait_healthy() if wait else process

    yield start
    for process in started:
        process.stop()


def publish(
    redis_url: str,
    job_type: str,
    payload: Any = None,
    *,
    timeout: int = 180,
    max_retries: int = 0,
    queue: str = "app-queue",
    run_at: float | None = None,
) -> str:
    """Publish one job exactly as the API does, bypassing its validation (for worker tests);
    `queue` is the RQ queue (priority included); `run_at` schedules it."""
    import asyncio

    from service.jobs.records import NewJob, new_id
    from service.store.publisher import Store

    job = NewJob(
        new_id(),
        job_type,
        queue,
        {} if payload is None else payload,
        timeout,
        max_retries,
        run_at=run_at,
    )

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(f"{redis_url}/1")
        await Store(client).publish([job])
        await client.aclose()

    asyncio.run(run())
    return job.id


@pytest.fixture
def mongo_server(tmp_path: Path) -> Iterator[EmbeddedMongo]:
    """A MongoDB stand-in of our own (nx-27017, a file database so it survives restarts)."""
    server = EmbeddedMongo(path=str(tmp_path / "mongo.sqlite")).start()
    yield server
    server.stop()


@pytest.fixture
def mongo_uri(mongo_server: EmbeddedMongo) -> str:
    """TEST_MONGODB_URI (a real MongoDB, emptied first) if set, else the stand-in's."""
    uri = os.environ.get("TEST_MONGODB_URI") or mongo_server.uri
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri)
    client.get_default_database().drop_collection("jobs")
    client.close()
    return uri


def enqueued(queue_redis: redis.Redis) -> dict[str, int]:
    """What publishing leaves in the queue's Redis: job hashes, ids waiting in a queue, scheduled
    entries and idempotency keys."""
    counts = {"jobs": 0, "queued": 0, "scheduled": 0, "idempotency_keys": 0}
    for key in queue_redis.scan_iter("rq:*", count=1000):
        if key.startswith(b"rq:job:"):
            counts["jobs"] += 1
        elif key.startswith(b"rq:queue:"):
            counts["queued"] += queue_redis.llen(key)
        elif key.startswith(b"rq:scheduled:"):
            counts["scheduled"] += queue_redis.zcard(key)
        elif key.startswith(b"rq:idempotency:"):
            counts["idempotency_keys"] += 1
    return counts


NOTHING = {"jobs": 0, "queued": 0, "scheduled": 0, "idempotency_keys": 0}
