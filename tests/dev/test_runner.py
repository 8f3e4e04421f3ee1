"""`python -m service dev` as a real process: a private Redis when none is configured, the demo
job types beside HANDLER_MODULES', and its children stopped in order on SIGTERM or SIGINT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from service.config import constants
from service.dev.embedded_redis import free_port
from tests.conftest import ROOT, http, wait_for

pytestmark = pytest.mark.slow
BANNER = "Ctrl-C stops everything."  # printed once the API and the worker are both ready


class Dev:
    """The dev runner, started from a folder of its own (it keeps its files there)."""

    def __init__(self, folder: Path, **env: str) -> None:
        self.log = folder / "dev.log"
        self.api = f"http://127.0.0.1:{free_port()}"
        self.worker = f"http://127.0.0.1:{free_port()}"
        settings = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(ROOT),
            "PORT": self.api.rsplit(":", 1)[1],
            "WORKER_PORT": self.worker.rsplit(":", 1)[1],
            "HANDLER_MODULES": "tests.sample_handlers",
            "WORKER_PROCESSES": "1",
            "LOG_LEVEL": "INFO",
            **env,
        }
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "dev"],
                env=settings,
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_ready(self) -> Dev:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"dev exited with {self.process.returncode}:\n{self.output}")
            return BANNER in self.output

        wait_for(ready, timeout=40, interval=0.05)
        return self

    def children(self) -> list[int]:
        """The processes it started itself (API, worker, private Redis and MongoDB)."""
        return parents().get(self.process.pid, [])

    def descendants(self) -> list[int]:
        """Its children, theirs (the worker's processes), and so on."""
        tree = parents()
        found: list[int] = []
        todo = [self.process.pid]
        while todo:
            children = tree.get(todo.pop(), [])
            found += children
            todo += children
        return found

    def run_job(self, job_type: str, payload: Any) -> dict[str, Any]:
        status, _, body = http("POST", f"{self.api}/jobs", {"type": job_type, "payload": payload})
        assert status == 202, body

        def ended() -> dict[str, Any] | None:
            job = http("GET", f"{self.api}/jobs/{body['id']}")[2]
            return job if job["status"] in ("finished", "failed") else None

        job: dict[str, Any] = wait_for(ended, timeout=20)
        return job


def parents() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def started_at(pid: int) -> str | None:
    """When the process started (clock ticks since boot), None once it has exited: with the
    pid, this names one process, never another that got the pid later."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return None if fields[0] == "Z" else fields[19]


def running(pid: int) -> bool:
    """Not yet exited (a zombie has exited)."""
    return started_at(pid) is not None


def serving(url: str) -> bool:
    try:
        http("GET", f"{url}/health", timeout=1)
    except OSError:
        return False
    return True


def answers(url: str) -> bool:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        return False
    return True


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Callable[..., Dev]]:
    started: list[Dev] = []
    # Each child in a session of its own, so killing the runner (not by a signal it handles)
    # spares them.
    family: list[tuple[int, str | None]] = []

    def start(**env: str) -> Dev:
        started.append(Dev(tmp_path, **env))
        started[-1].wait_ready()
        family.extend((pid, started_at(pid)) for pid in started[-1].descendants())
        return started[-1]

    yield start
    for runner in started:
        if runner.process.poll() is None:
            runner.process.kill()
            runner.process.wait()
    for pid, start_time in family:
        if start_time is not None and started_at(pid) == start_time:
            os.kill(pid, signal.SIGKILL)


def test_without_redis_it_starts_a_private_one_and_stops_it_after_its_children(
    dev: Callable[..., Dev],
) -> None:
    # Given dev mode started with no Redis configured
    runner = dev()
    found = re.search(r"started a private Redis \(.*\) on (redis://\S+)", runner.output)
    assert found, runner.output
    private = found.group(1)
    children = runner.children()
    assert len(children) >= 3  # the API, the worker, the Redis (and MongoDB where nx-27017 is)
    # Then jobs go through the private Redis, and the demo types run beside HANDLER_MODULES'
    assert runner.run_job("echo", {"hello": "dev"})["result"] == {"hello": "dev"}
    job = runner.run_job("test.count", {"key": "runs"})
    assert job["status"] == "finished"
    assert redis.Redis.from_url(f"{private}/1").exists(constants.job_key(job["id"]))
    # When it gets SIGTERM
    runner.process.send_signal(signal.SIGTERM)
    # Then the API and the worker stop gracefully (exit 0 for both), then the private Redis
    assert runner.process.wait(30) == 0, runner.output
    assert not any(running(pid) for pid in children)
    assert not answers(private)


def test_with_redis_configured_it_starts_none_and_stops_on_sigint(
    dev: Callable[..., Dev], redis_url: str, queue_redis: redis.Redis
) -> None:
    # Given dev mode started with REDIS_URL and QUEUE_REDIS_URL set
    runner = dev(REDIS_URL=f"{redis_url}/0", QUEUE_REDIS_URL=f"{redis_url}/1")
    assert "private Redis" not in runner.output
    # Then its jobs are in the configured Redis
    job = runner.run_job("noop", {})
    assert job["status"] == "finished"
    assert queue_redis.exists(constants.job_key(job["id"]))
    children = runner.children()
    # When it gets SIGINT (Ctrl-C)
    runner.process.send_signal(signal.SIGINT)
    # Then it stops its children and exits 0; the configured Redis is left running
    assert runner.process.wait(30) == 0, runner.output
    assert not any(running(pid) for pid in children)
    assert queue_redis.ping()


def test_a_second_signal_kills_a_worker_still_draining(dev: Callable[..., Dev]) -> None:
    # Given dev mode with a job running that will not end within the worker's long drain
    runner = dev(SHUTDOWN_TIMEOUT="60")
    status, _, body = http(
        "POST", f"{runner.api}/jobs", {"type": "test.block", "payload": {"key": "never"}}
    )
    assert status == 202
    wait_for(lambda: http("GET", f"{runner.api}/jobs/{body['id']}")[2]["status"] == "started")
    children = runner.children()
    family = runner.descendants()  # the worker's processes too
    assert len(family) > len(children)
    # When it gets SIGTERM, the API stops while the worker drains (it answers 503: stopping)
    runner.process.send_signal(signal.SIGTERM)
    wait_for(lambda: not serving(runner.api))
    assert http("GET", f"{runner.worker}/health")[0] == 503
    assert runner.process.poll() is None
    # And when it gets a second signal
    runner.process.send_signal(signal.SIGINT)
    # Then it kills its children at once and exits non-zero, its private Redis stopped too
    code = runner.process.wait(15)
    assert code != 0
    wait_for(lambda: not any(running(pid) for pid in children), timeout=5)
    # And the worker's processes with them: none drains on without its supervisor
    wait_for(lambda: not any(running(pid) for pid in family), timeout=5)
